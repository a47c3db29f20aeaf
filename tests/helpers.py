"""Helpers shared by several test files (pytest puts tests/ on sys.path: `from helpers import ...`)."""
import re


def cvnets_key(key: str, depths: tuple[int, ...]) -> str:
    """ml-cvnets name of one of our keys, written from spec §5's table (independent of the converter)."""
    key = re.sub(r"^stem\.", "conv_1.block.", key)
    key = re.sub(r"^final_conv\.", "conv_1x1_exp.block.", key)
    key = key.replace("head.fc.", "classifier.fc.")
    m = re.match(r"^stages\.(\d)\.(\d)\.(.*)$", key)
    if m:
        stage, idx, rest = int(m.group(1)), m.group(2), m.group(3)
        rest = (rest.replace("conv1_1x1.", "block.exp_1x1.block.").replace("conv2_kxk.", "block.conv_3x3.block.")
                .replace("conv3_1x1.", "block.red_1x1.block."))
        rest = rest.replace("conv_kxk.", "local_rep.conv_3x3.block.").replace("conv_1x1.weight", "local_rep.conv_1x1.block.conv.weight")
        rest = re.sub(r"^norm\.", f"global_rep.{depths[stage - 2] if stage >= 2 else 0}.", rest)
        rest = (rest.replace(".norm1.", ".pre_norm_mha.0.").replace(".attn.qkv.", ".pre_norm_mha.1.qkv_proj.")
                .replace(".attn.proj.", ".pre_norm_mha.1.out_proj.").replace(".norm2.", ".pre_norm_ffn.0.")
                .replace(".mlp.fc1.", ".pre_norm_ffn.1.").replace(".mlp.fc2.", ".pre_norm_ffn.4."))
        rest = re.sub(r"^transformer\.", "global_rep.", rest)
        rest = rest.replace("conv_proj.", "conv_proj.block.").replace("conv_fusion.", "fusion.block.")
        key = f"layer_{stage + 1}.{idx}.{rest}"
    return key.replace(".bn.", ".norm.")
