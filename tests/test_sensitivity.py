"""Prior sweeps (hierjax.validation.sensitivity): values against the quadrature reference, changes
from the base, and no recompile across scales of one family."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from reference import reference

import hierjax
from hierjax.engine.fitting import fit_standardized

X64 = bool(jax.config.jax_enable_x64)


def test_sweep_values_changes_and_no_recompile():
    y, s = hierjax.eight_schools()
    kw = {"mu_prior": "normal:0,5", "quantiles": hierjax.DEFAULT_LEVELS}
    before = fit_standardized._cache_size()
    sw = hierjax.sweep(
        y,
        s,
        tau_priors=["half-cauchy:5", "half-cauchy:25", "half-cauchy:100"],
        base="half-cauchy:25",
        **kw,
    )
    assert fit_standardized._cache_size() <= before + 1  # one family: one kernel
    size = fit_standardized._cache_size()
    other = hierjax.sweep(y, s, tau_priors=["half-cauchy:10", "half-cauchy:50"], **kw)
    assert fit_standardized._cache_size() == size  # scales are leaves: no recompile
    assert sw.base == 1 and sw.priors == ("half-cauchy:5", "half-cauchy:25", "half-cauchy:100")
    assert sw.summaries["mu.mean"].shape == (3, 1) and sw.summaries["theta.mean"].shape == (3, 1, 8)
    assert other.summaries["mu.mean"].shape == (2, 1)
    tol = 1e-7 if X64 else 1e-3
    for name in ("mu", "tau"):
        ref = reference(tuple(y), tuple(s), "half-cauchy:5", "normal:0,5").marginal(name)
        assert sw.summaries[f"{name}.mean"][0, 0] == pytest.approx(ref.mean, abs=tol * ref.sd)
        assert sw.summaries[f"{name}.q0.5"][0, 0] == pytest.approx(
            ref.quantiles[2], abs=tol * ref.sd
        )
    for k, v in sw.change.items():
        np.testing.assert_array_equal(v[1][np.isfinite(v[1])], 0.0)
        np.testing.assert_allclose(v[0], sw.summaries[k][0] - sw.summaries[k][1])
    # a wider prior on tau lets tau grow: E[tau | y] rises with the scale
    assert sw.change["tau.mean"][0, 0] < 0 < sw.change["tau.mean"][2, 0]
    with pytest.raises(hierjax.InputError, match="base"):
        hierjax.sweep(y, s, tau_priors=["half-cauchy:5"], base=3)
