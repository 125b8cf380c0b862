"""The multi-turn workload of bench_cluster.py has the shape the comparison relies on: each
conversation's turns re-send its whole history (so a replica that served turn k holds turn k+1's
prefix), conversations are sent turn by turn, and each run's conversations are its own."""

import json

from bench_cluster import conversations


def test_each_turn_resends_the_history_and_runs_never_share_a_prompt(tmp_path):
    n = conversations(tmp_path / "a.jsonl", seed=1, n=3, turns=4, output_len=16)
    rows = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert n == len(rows) == 12
    assert {r["output_tokens"] for r in rows} == {16}
    for conv in range(3):
        turns = [rows[t * 3 + conv]["prompt"] for t in range(4)]  # ordered turn by turn
        for before, after in zip(turns, turns[1:], strict=False):
            assert after.startswith(before + "\n")  # the history, then the answer and a new question
        assert len(turns[0]) > 512  # the document alone fills the gateway's default affinity key
    firsts = {rows[c]["prompt"][:512] for c in range(3)}
    assert len(firsts) == 3  # each conversation about a document of its own
    conversations(tmp_path / "b.jsonl", seed=2, n=3, turns=4, output_len=16)
    other = {json.loads(x)["prompt"] for x in (tmp_path / "b.jsonl").read_text().splitlines()}
    assert not other & {r["prompt"] for r in rows}  # a new seed: prompts no replica has seen
