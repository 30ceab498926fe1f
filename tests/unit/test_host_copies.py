"""How a batch's tensors are split into page-locked buffers for the copy to the host (``record.batch.pack``)."""

import random

from alignit_probe.record.batch import pack


def test_pack_keeps_order_and_fills_each_run_up_to_the_limit():
    rng = random.Random(0)
    for _ in range(200):
        sizes = [rng.choice([0, 1, 5, 17, 64, 200]) for _ in range(rng.randrange(0, 30))]
        runs = pack(sizes, 64)
        assert [i for run in runs for i in run] == list(range(len(sizes)))  # every item once, in order
        for k, run in enumerate(runs):
            total = sum(sizes[i] for i in run)
            assert total <= 64 or len(run) == 1  # a larger item stands alone
            if k + 1 < len(runs):  # greedy: the next item did not fit
                assert total + sizes[runs[k + 1][0]] > 64
    assert pack([], 64) == [] and pack([200], 64) == [[0]]
