"""No false alarms: `python -m tvtheory.bound` on valid runs reports no failure, whatever the learning rate.

The default network (digits, 64-32-10, tanh, CE) is run over learning rates from 1e-7 (where every
remainder at the user's eta is rounding, so the slope grid must be raised) to 20 (far past 2 / ||H||, where
the second-order terms dominate), in float64 and float32, with the default and other optimizers. A valid run
exits 0 with every applicable verdict holding (a run that diverges is refused with exit status 2 and the
divergence named, which is not a failure of the theory).
"""

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from strategies import learning_rates

from tvtheory.cli import main


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lr=learning_rates(-7, 1.3), dtype=st.sampled_from(("float64", "float32")),
       optimizer=st.sampled_from(("gd", "gd", "momentum", "adam")))
@example(lr=1e-7, dtype="float64", optimizer="gd")
@example(lr=1e-6, dtype="float32", optimizer="gd")
@example(lr=1e-4, dtype="float32", optimizer="gd")
@example(lr=20.0, dtype="float32", optimizer="gd")
def test_valid_runs_never_report_a_failure(lr, dtype, optimizer, capsys):
    status = main(["--lr", repr(lr), "--dtype", dtype, "--optimizer", optimizer, "--no-progress"])
    out, err = capsys.readouterr()          # the captured output of this call only
    if status == 2:                         # refused: only a divergence may be, for these valid flags
        assert "lower the learning rate" in err, err
        return
    assert status == 0 and "FAILS" not in out, out
