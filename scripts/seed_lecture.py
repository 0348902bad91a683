"""The seed lecture's eight-schools walk-through, computed by hierjax.

No pooling, complete pooling (Fisher weighting) and its posterior predictive,
partial pooling with tau fixed and with mu and tau known, and partial pooling with
tau integrated out; ``P(theta_j > 0 | y)``, ``P(mu > 0 | y)`` and the impact of tau.

    python scripts/seed_lecture.py [--x64]
"""

import argparse

import jax


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--x64", action="store_true")
    if p.parse_args().x64:
        jax.config.update("jax_enable_x64", True)
    import numpy as np

    import hierjax

    y, sigma = hierjax.eight_schools()
    np.set_printoptions(precision=4, suppress=True)
    print("no pooling (MLE):        ", hierjax.no_pooling(y, sigma).mean[0])
    pooled = hierjax.complete_pooling(y, sigma)
    print("complete pooling mu:      %.6f (sd %.4f)" % (pooled.mean[0], pooled.sd[0]))
    print(
        "P(y_new >= 28 | sigma=15): %.7g"
        % hierjax.complete_pooling_predictive(y, sigma, 15, 28)[2][0]
    )
    print(
        "P(y_new < -3 | sigma=16):  %.7g"
        % (1 - hierjax.complete_pooling_predictive(y, sigma, 16, -3)[2][0])
    )
    for tau in (0.0, 5.0, 10.0, 25.0):
        pp = hierjax.partial_pooling(y, sigma, tau=tau)
        print(f"E[theta | tau={tau:>4}, y]:  ", pp.theta_mean[0])
    pk = hierjax.partial_pooling(y, sigma, tau=5.0, mu=8.0)
    print("E[theta | mu=8, tau=5, y]:", pk.theta_mean[0])
    f = hierjax.fit(y, sigma)
    print("tau integrated out (uniform tau, flat mu):")
    print("  E[theta | y]:     ", f.theta.mean[0])
    print("  P(theta > 0 | y): ", f.theta.p_gt0[0])
    print("  P(mu > 0 | y):     %.4f" % f.mu.p_gt0[0])


if __name__ == "__main__":
    main()
