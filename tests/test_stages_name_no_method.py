"""The stages call the run's methods' hooks and name none of them (issue 26, item 2): a method is one module under
dgrpo.methods, so adding or changing one touches no stage."""

import re
from pathlib import Path

STAGES = Path(__file__).resolve().parents[1] / "src" / "dgrpo" / "stages"
FORBIDDEN = {
    r"""method\s*[!=]=\s*["']diverse["']""": "DiverseGRPO's switch (cluster.method == 'diverse')",
    r"\bdetail_baseline\b": "DiverseGRPO's cluster baseline option",
    r"\buses_sa\b": "DiverseGRPO's SA-Reg option",
    r"\bscore_group\b": "DiverseGRPO's bonus",
    r"\bsa_regularizer\b": "DiverseGRPO's SA-Reg term",
    r"\bcluster_advantages\b": "DiverseGRPO's cluster baseline",
    r"\.(drift|progrpo|gardo|diversegrpo)\b": "a built-in method's section or module",
}


def test_the_stages_name_no_method():
    """Code, comments and docstrings alike: a stage that needs a method's behaviour calls a hook."""
    found = []
    for path in sorted(STAGES.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            found += [f"{path.relative_to(STAGES)}:{number}: {what}: {line.strip()}"
                      for pattern, what in FORBIDDEN.items() if re.search(pattern, line)]
    assert not found, "\n".join(found)


def test_the_patterns_catch_what_they_name():
    lines = ['if c.method == "diverse":', "t.detail_baseline", "cfg.drift.prompt_noise", "ctx.config.gardo.kl_gate",
             "from dgrpo.methods.progrpo import x", "t.uses_sa and j < k", "score_group(q, e, c, 0)"]
    for line in lines:
        assert any(re.search(p, line) for p in FORBIDDEN), line
    assert not any(re.search(p, "DRIFT's outlier filter, GARDO's novelty") for p in FORBIDDEN)
