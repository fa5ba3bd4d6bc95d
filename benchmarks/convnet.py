"""The book's SimpleConvNet (issue 25): one-image and mini-batch gradients, timed interleaved.

The default net (1x28x28 input, 30 filters of 5x5, 2x2 max pooling, hidden 100, 10
classes: 433,890 parameters) on embedded MNIST images. Cases of a group are timed once per
round in an order that rotates from round to round; medians over rounds, ratios from the
same run:

- ``one-image``: the full numerical gradient by the batched evaluator (`net.numerical_gradient`,
  a resident `Gradient`) at 1 worker and at 2 (``dispatch="parallel"``); backprop (the floor);
  the loop evaluator at 1 and 2 workers on a window of ``--window`` entries of ``w2``
  (the book's closure over a view), scaled to the 433,890 entries (the loop costs two full
  forward passes per entry, whichever array the entry is in).
- ``batch``: ``--batch`` images, batched at 1 worker against backprop.

Checked on every round: 1 and 2 workers bit-identical (``np.array_equal``); the loop
window equal to the batched gradient's entries to 1e-9 relative or 4 ulps of the loss / 2h
(the loop's own rounding), whichever is larger; once, the batched
gradient against backprop per array (normwise), with the entries the gradient check
calls kinks left out and counted.

    python benchmarks/convnet.py --rounds 5 --out benchmarks/results/local/convnet.json
    python benchmarks/convnet.py --quick --out /tmp/convnet.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
import warnings

import numpy as np
from measuring import Interference, describe_machine

from engine import Gradient, SimpleConvNet, load_embedded_mnist

H = 1e-4


def timed(call):
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def loop_window(net, x, t, workers):
    """A resident loop-evaluator `Gradient` of the book's closure (to call on a view of w2)."""
    return Gradient(lambda w: net.loss(x, t, train=True), workers=workers, evaluator="loop",
                    dispatch="parallel" if workers > 1 else "auto")


def one_image_cases(net, x, t, window, loops):
    view = net.params["w2"].reshape(-1)[:window]
    return {
        "batched, 1 worker": lambda: net.numerical_gradient(x, t, workers=1),
        "batched, 2 workers": lambda: net.numerical_gradient(x, t, workers=2, dispatch="parallel"),
        "backprop": lambda: net.gradient(x, t),
        f"loop, 1 worker, {window} entries": lambda: loops[0](view),
        f"loop, 2 workers, {window} entries": lambda: loops[1](view),
    }


def run_group(cases, rounds, check):
    times = {name: [] for name in cases}
    shares = []
    names = list(cases)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        results = {}
        with Interference() as load:
            for name in order:
                seconds, results[name] = timed(cases[name])
                times[name].append(seconds)
        shares.append(load.share)
        check(results)
    return {name: {"median_s": statistics.median(v), "all_s": v} for name, v in times.items()}, shares


def agreement(net, x, t, numerical):
    from engine.train._gradcheck import gradient_check
    exact = net.gradient(x, t)
    normwise = {k: float(np.linalg.norm(numerical[k] - exact[k]) / np.linalg.norm(exact[k]))
                for k in exact}
    report = gradient_check(net, x, t)
    kinks = {k: len(d.kinks) for k, d in report.items()}
    return {"normwise_all_entries": normwise, "relative_without_kinks": {
        k: d.relative for k, d in report.items()}, "kinks": kinks}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--window", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="one round, small window and batch")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.window, args.batch = 1, 50, 5
    warnings.simplefilter("ignore")
    train, _ = load_embedded_mnist()
    net = SimpleConvNet(seed=0)
    size = sum(a.size for a in net.params.values())
    x, t = train.images[:1], train.labels[:1]
    window = args.window
    noise = 4 * np.spacing(net.loss(x, t, train=True)) / (2 * H)

    def check_one(results):
        one, two = results["batched, 1 worker"], results["batched, 2 workers"]
        assert all(np.array_equal(one[k], two[k]) for k in one)
        batched = one["w2"].reshape(-1)[:window]
        bound = max(noise, 1e-9 * np.abs(batched).max())   # the loop's own rounding, or 1e-9 relative
        for name in (f"loop, 1 worker, {window} entries", f"loop, 2 workers, {window} entries"):
            assert np.abs(results[name] - batched).max() <= bound, name

    loops = [loop_window(net, x, t, 1), loop_window(net, x, t, 2)]
    for loop in loops:   # start the workers before the clock
        loop(net.params["w2"].reshape(-1)[:2])
    one_image, shares = run_group(one_image_cases(net, x, t, window, loops), args.rounds, check_one)
    for loop in loops:
        loop.close()
    for name in list(one_image):
        if name.startswith("loop"):
            one_image[name]["full_gradient_est_s"] = one_image[name]["median_s"] * size / window
    xb, tb = train.images[:args.batch], train.labels[:args.batch]
    batch, batch_shares = run_group({"batched, 1 worker": lambda: net.numerical_gradient(xb, tb, workers=1),
                                     "backprop": lambda: net.gradient(xb, tb)},
                                    max(1, args.rounds // 2), lambda results: None)
    document = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": describe_machine(), "parameters": size, "window": window, "batch": args.batch,
        "one_image": one_image, "one_image_interference": shares,
        "batch_group": batch, "batch_interference": batch_shares,
        "agreement_one_image": agreement(net, x, t, net.numerical_gradient(x, t, workers=1)),
    }
    med = {k: v["median_s"] for k, v in one_image.items()}
    document["ratios"] = {
        "loop 1 worker (est.) / batched 1 worker": one_image[f"loop, 1 worker, {window} entries"][
            "full_gradient_est_s"] / med["batched, 1 worker"],
        "batched 1 worker / backprop, one image": med["batched, 1 worker"] / med["backprop"],
        f"batched / backprop, batch of {args.batch}": batch["batched, 1 worker"]["median_s"]
        / batch["backprop"]["median_s"],
    }
    with open(args.out, "w") as file:
        json.dump(document, file, indent=1)
    print(json.dumps({"one_image": {k: (round(v["median_s"], 4), round(v.get("full_gradient_est_s", 0), 1))
                                    for k, v in one_image.items()},
                      "batch": {k: round(v["median_s"], 4) for k, v in batch.items()},
                      "ratios": document["ratios"], "interference": shares + batch_shares,
                      "agreement": document["agreement_one_image"]}, indent=1))


if __name__ == "__main__":
    main()
