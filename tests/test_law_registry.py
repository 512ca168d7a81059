"""A law form is one file: a law registered from outside the package, with an option of its own, is fitted,
saved, predicted and listed by the command line without any other change."""

import json

import numpy as np
import pandas as pd
import pytest

from analysis.laws import LAWS, Option, PowerLaw, register


@pytest.fixture
def toy_law():
    @register
    class DataPowerLaw(PowerLaw):
        """L = E + A x^-alpha in the data axis (tokens D by default, or tokens per parameter)."""

        name = "toy-data"
        options = (Option("--toy-axis", "x", "toy-data: the data variable, D or N (default D)", choices=("D", "N"), default="D"),)

        def __init__(self, x: str = "D", **kw):
            super().__init__(x=x, **kw)

    yield DataPowerLaw
    LAWS.pop("toy-data")


def test_a_law_registered_outside_the_package_is_a_cli_law(toy_law, tmp_path, capsys):
    from scaling.cli import main

    N = np.logspace(5, 8, 12)
    D = 20 * N[::-1]
    pd.DataFrame({"N": N, "D": D, "C": 6 * N * D, "loss": 1.2 + 40 * D**-0.3}).to_csv(tmp_path / "runs.csv", index=False)
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    helptext = capsys.readouterr().out
    assert "toy-data" in helptext and "--toy-axis" in helptext
    assert main(["fit", "toy-data", str(tmp_path / "runs.csv"), "--no-calibrate", "--json", "--save", str(tmp_path / "fit.json")]) == 0
    out = json.loads(capsys.readouterr().out)
    # noiseless data from the law: the parameters come back (Huber fit to float precision; 1e-4 relative)
    assert out["params"]["alpha"] == pytest.approx(0.3, rel=1e-4) and out["params"]["E"] == pytest.approx(1.2, rel=1e-4)
    assert main(["predict", str(tmp_path / "fit.json"), "--D", "1e12", "--json", "--fit-only"]) == 0
    pred = json.loads(capsys.readouterr().out)["predictions"][0]
    assert pred["loss"] == pytest.approx(1.2 + 40 * 1e12**-0.3, rel=1e-4)
    # the option reaches the constructor: in N the same table is no law of this form (the fit differs)
    assert main(["fit", "toy-data", str(tmp_path / "runs.csv"), "--toy-axis", "N", "--no-calibrate", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["x"] == "N"
    # another law's exclusive flag is refused for it, in one line
    assert main(["fit", "toy-data", str(tmp_path / "runs.csv"), "--tie-exponents", "--no-calibrate"]) == 2
    assert "--tie-exponents applies to the chinchilla law only" in capsys.readouterr().err
