from hybridvit.cli import main


def test_models_lists_registered_models(capsys):
    assert main(["models", "--family", "mobilevit"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("hv_mobilevit_xxs "))
    assert "1.272" in row and "0.407" in row and "69.0" in row


def test_info_prints_stage_shapes(capsys):
    assert main(["info", "hv_mobilevit_xxs", "--res", "224"]) == 0
    out = capsys.readouterr().out
    assert "1,272,024 params" in out
    assert "1x80x7x7" in out  # stage 5 at stride 32


def test_unknown_model_is_one_line_with_suggestions(capsys):
    assert main(["info", "mobilevit_sx"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "unknown model 'mobilevit_sx'" in err and "hv_mobilevit_s" in err
