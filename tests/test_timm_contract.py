"""timm's model contract on every hybridvit model: the API that timm's train.py, its feature wrappers,
its optimizer factory and its own tests/test_models.py rely on.

Cheap checks (built on the meta device) run on every registered model; the costly ones (forward passes,
FX tracing, scripting, gradient checkpointing) on the smallest model of each family.
"""
import copy

import pytest
import timm
import torch
import torch.nn as nn
from timm.models import get_notrace_functions, get_notrace_modules, group_parameters
from timm.models._features import FeatureGetterNet
from timm.optim import param_groups_layer_decay
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import hybridvit
from hybridvit.errors import InputShapeError, UnsupportedOptionError
from hybridvit.models._builder import build
from hybridvit.models.boat import BoatConfig, BoatTransformer

ALL_MODELS = hybridvit.list_models()
# (model, input side): the smallest model of each family, at a small input (BOAT takes any size from 32x32);
# BOAT's checks run on the same class at 1/6 of BOAT-T's width.
SMALLEST = {
    "mobilevit": ("hv_mobilevit_xxs", 64),
    "xformer": ("xformer_xxs", 64),
    "mocovit": ("mocovit_050", 64),
    "ceit": ("ceit_tiny_patch16_224", 64),
    "boat_swin": ("boat_swin_tiny", 64),
    "boat_cswin": ("boat_cswin_tiny", 64),
}
# timm scripts its closest models (mobilevit_*, ghostnet_*, deit_*, swin_*); see test_torch_jit_script.
SCRIPTED = ["mobilevit", "xformer", "mocovit", "ceit", "boat_swin", "boat_cswin"]
TRACER_KWARGS = dict(
    leaf_modules=list(get_notrace_modules()), autowrap_functions=list(get_notrace_functions()), param_shapes_constant=True
)
_CACHE: dict[str, nn.Module] = {}


def _create(family: str, **kwargs) -> nn.Module:
    """`timm.create_model` for the family's smallest model; BOAT through the same builder with a narrow config."""
    name, _ = SMALLEST[family]
    if family.startswith("boat"):
        isla = family.split("_")[1]
        cfg = BoatConfig(isla, 16, (2, 2, 2, 2), (2, 2, 4, 4), drop_path_rate=0.1)
        if kwargs.get("features_only"):
            kwargs.setdefault("out_indices", (0, 1, 2, 3))
        return build(BoatTransformer, name, cfg=cfg, **kwargs)
    return timm.create_model(name, **kwargs)


def _model(family: str) -> tuple[nn.Module, torch.Tensor]:
    """The family's smallest model in eval mode (built once per session) and a batch of two images."""
    _, size = SMALLEST[family]
    if family not in _CACHE:
        torch.manual_seed(0)
        _CACHE[family] = _create(family).eval()
    return _CACHE[family], torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def _meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


# ---- every registered model (meta device) ----


@pytest.mark.parametrize("name", ALL_MODELS)
def test_group_matcher_groups_every_parameter_from_stem_to_head(name):
    model = _meta(name)
    model.set_grad_checkpointing(True)  # exists everywhere (timm's train.py --grad-checkpointing calls it)
    assert callable(model.forward_intermediates) and callable(model.prune_intermediate_layers)
    names = {n for n, _ in model.named_parameters()}
    first_conv = model.pretrained_cfg["first_conv"] + ".weight"
    for coarse in (False, True):
        groups = group_parameters(model, model.group_matcher(coarse=coarse))
        grouped = [n for members in groups.values() for n in members]
        assert sorted(grouped) == sorted(names), "each parameter in exactly one group"
        order = list(groups)
        assert first_conv in groups[order[0]], "the stem is the first group"
        assert len(groups) >= 4
    # layer-wise LR decay (timm's optimizer factory): the stem learns slowest, the classifier at full rate
    scales = {id(p): g["lr_scale"] for g in param_groups_layer_decay(model, layer_decay=0.5) for p in g["params"]}
    params = dict(model.named_parameters())
    classifier = model.pretrained_cfg["classifier"] + ".weight"
    assert scales[id(params[first_conv])] < scales[id(params[classifier])] == 1.0


@pytest.mark.parametrize("name", ALL_MODELS)
def test_global_pool_argument_and_pool_size(name):
    model = _meta(name, global_pool="avg", num_classes=0)
    assert model.num_classes == 0
    pool_size = model.pretrained_cfg["pool_size"]
    assert pool_size is not None and len(pool_size) == 2


# ---- the smallest model of each family ----


@pytest.mark.parametrize("family", SMALLEST)
def test_forward_intermediates_end_in_forward_features(family):
    model, x = _model(family)
    info = model.feature_info
    with torch.no_grad():
        features = model.forward_features(x)
        final, inter = model.forward_intermediates(x)
        assert torch.equal(final, features)
        assert len(inter) == len(info)
        for t, i in zip(inter, info):
            assert t.shape[:2] == (2, i["num_chs"])
            assert t.shape[-2:] == tuple(-(-s // i["reduction"]) for s in x.shape[-2:])
        last_two = model.forward_intermediates(x, indices=2, stop_early=True, intermediates_only=True)
        for a, b in zip(last_two, inter[-2:]):
            assert torch.equal(a, b)
        first = model.forward_intermediates(x, indices=[0], intermediates_only=True)
        assert len(first) == 1 and torch.equal(first[0], inter[0])
        # stop_early: the last level's module never runs when level 1 is the last one asked for
        ran = []
        hook = model.get_submodule(info[-1]["module"]).register_forward_pre_hook(lambda *_: ran.append(1))
        try:
            _, early = model.forward_intermediates(x, indices=[1], stop_early=True)
        finally:
            hook.remove()
        assert not ran and len(early) == 1 and torch.equal(early[0], inter[1])
    with pytest.raises(UnsupportedOptionError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NHWC")


@pytest.mark.parametrize("family", SMALLEST)
def test_getter_features_are_the_intermediates_of_the_pruned_model(family):
    model, x = _model(family)
    out_indices = (1, 2) if family == "ceit" else (0, 1, 2)
    getter = FeatureGetterNet(copy.deepcopy(model), out_indices=out_indices).eval()  # prunes the later layers
    with torch.no_grad():
        expected = model.forward_intermediates(x, indices=list(out_indices), intermediates_only=True)
        got = getter(x)
    assert len(got) == len(out_indices)
    for a, b in zip(got, expected):
        assert torch.equal(a, b)
    # timm's own path: features_only=True, feature_cls="getter"
    features = _create(family, features_only=True, feature_cls="getter").eval()
    assert [f.shape[1] for f in features(x)] == features.feature_info.channels()


@pytest.mark.parametrize("family", SMALLEST)
def test_fx_trace_equals_eager_and_keeps_input_checks(family):
    model, x = _model(family)
    _, eval_nodes = get_graph_node_names(model, tracer_kwargs=TRACER_KWARGS)
    traced = create_feature_extractor(model, return_nodes=[eval_nodes[-1]], tracer_kwargs=TRACER_KWARGS)
    with torch.no_grad():
        assert torch.equal(next(iter(traced(x).values())), model(x))
    with pytest.raises(InputShapeError, match="input channels"):  # the check is a leaf of the graph
        traced(x[:, :1])
    if family in SCRIPTED:  # timm's test_model_forward_fx_torchscript: the traced graph scripts as well
        with torch.no_grad():
            scripted = next(iter(torch.jit.script(traced)(x).values()))
        torch.testing.assert_close(scripted, model(x), rtol=1e-5, atol=1e-5)
    # timm's FX feature wrapper over the feature_info modules
    fx_features = _create(family, features_only=True, feature_cls="fx").eval()
    with torch.no_grad():
        outs = fx_features(x)
    assert [o.shape[1] if o.ndim == 4 else o.shape[-1] for o in outs] == fx_features.feature_info.channels()


@pytest.mark.parametrize("family", SCRIPTED)
def test_torch_jit_script(family):
    model, x = _model(family)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(torch.jit.Error, match="input channels"):
        scripted(x[:, :1])


def _saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the activations autograd keeps for backward outside checkpointed segments (distinct storages,
    parameters excluded). Checkpointed segments keep only their inputs, which this does not see.
    """
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in weights:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum().backward()
    return sum(storages.values())


@pytest.mark.parametrize("family", SMALLEST)
def test_grad_checkpointing_same_outputs_and_gradients_less_saved(family):
    _, size = SMALLEST[family]
    torch.manual_seed(0)
    model = _create(family).train()  # with its dropouts and drop-path: checkpointing replays the RNG state
    x = torch.randn(2, 3, size, size)
    torch.manual_seed(1)
    y = model(x)
    y.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    plain = _saved_bytes(model, x)

    model.zero_grad()
    model.set_grad_checkpointing(True)
    torch.manual_seed(1)
    y2 = model(x)
    y2.sum().backward()
    torch.testing.assert_close(y2, y, rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-6, msg=n)
    checkpointed = _saved_bytes(model, x)
    assert checkpointed < 0.5 * plain, (checkpointed, plain)


@pytest.mark.parametrize("family", SMALLEST)
def test_factory_device_dtype_and_reset_classifier_keep_them(family):
    # timm >= 1.0.31 passes create_model(device=..., dtype=...) to the model; its reset_classifier keeps both
    model = _create(family, device="meta", dtype=torch.bfloat16)
    assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"meta"}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    model.eval().to(dtype=torch.float64)
    model.reset_classifier(0)  # then a new head from a head with no tensors left, as timm's test_models does
    model.reset_classifier(7)
    head = model.get_classifier()
    assert [(p.device.type, p.dtype) for p in head.parameters()] == [("meta", torch.float64)] * 2
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize("family", ["mobilevit", "mocovit", "ceit"])
def test_no_pooling_keeps_the_feature_map(family):
    model, x = _model(family)
    model = copy.deepcopy(model)
    model.reset_classifier(0, "")
    with torch.no_grad():
        out, features = model(x), model.forward_features(x)
    if family == "ceit":  # no pooling: every layer's class token, normed
        torch.testing.assert_close(out, model.norm(features))
    else:
        assert out.ndim == 4 and out.shape[-2:] == features.shape[-2:]


def test_ceit_global_pool_choices():
    model, x = _model("ceit")
    with torch.no_grad():
        tokens = model.forward_features(x)
        token = timm.create_model("ceit_tiny_patch16_224", global_pool="token", num_classes=0).eval()
        token.load_state_dict(model.state_dict(), strict=False)  # no LCA / pos_layer_embed in it
        torch.testing.assert_close(token(x), token.norm(tokens[:, -1]))
    assert not any(n.startswith(("lca", "pos_layer_embed")) for n, _ in token.named_parameters())
    with pytest.raises(UnsupportedOptionError, match="global_pool"):
        timm.create_model("ceit_tiny_patch16_224", global_pool="max")
    with pytest.raises(UnsupportedOptionError, match="no LCA"):
        token.reset_classifier(10, "lca")
