"""``python -m bench tables``: a hand-built results.csv with known numbers, aggregated over two
replicates, orderings tested against the spread both ways, ablation pairs found."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main

# variant: (method, tables, reverse, denoise, norm_control, guidance, feature_loss, NFE,
#           FID per replicate)
ALL, DEN = "main,reverse,denoise,ablations", "main,denoise"
VARIANTS = {
    "tarflow": ("tarflow", ALL, "exact", "none", "on", 0.0, "off", 192, (30, 32)),
    "tarflow_score": ("tarflow_score", DEN, "exact", "score", "on", 0, "off", 193, (20, 22)),
    "biflow_naive": ("biflow", "reverse", "naive", "learned", "on", 0.0, "off", 1, (15, 17)),
    "biflow": ("biflow", ALL, "aligned", "learned", "on", 0.0, "off", 1, (10, 12)),
    "biflow_nonorm": ("biflow", "ablations", "aligned", "learned", "off", 0.0, "off", 1, (13, 14)),
    "biflow_cfg": ("biflow", "ablations", "aligned", "learned", "on", 1.5, "off", 1, (9, 9.5)),
    "biflow_feat": ("biflow", "ablations", "aligned", "learned", "on", 0, "vgg", 1, (11, 13)),
    "tarflow_cfg": ("tarflow", "ablations", "exact", "none", "on", 2.0, "off", 384, (25, 27)),
    "tarflow_cond": ("tarflow", "ablations", "exact", "none", "on", 0.0, "off", 192, (30, 32)),
    "biflow_cond": ("biflow", "ablations", "aligned", "learned", "on", 0.0, "off", 1, (10, 12)),
    # biflow's factors but another sampler: never paired with a biflow row
    "other_cfg": ("biflow_score", "ablations", "aligned", "learned", "on", 1.5, "off", 1, (8, 9)),
}
CONDITIONAL = {"tarflow_cfg", "tarflow_cond", "biflow_cfg", "biflow_cond", "other_cfg"}
FORM = {"tarflow_cfg": "inference", "tarflow_cond": "inference", "biflow_cfg": "training"}
FORM |= {"biflow_cond": "training", "other_cfg": "training"}
ANCHORS = {"anchor: gaussian noise": (400, 420), "anchor: held-out real": (1, 3)}


def results(fids: dict[str, tuple[float, ...]] | None = None, replicates: int = 2) -> pd.DataFrame:
    """One row per (variant, replicate) plus anchors (listed first, to test they go last); as
    in the runner, a sampler listed under ``methods`` has the variant "default"."""
    fids = fids or {}
    rows = []
    for rep in range(replicates):
        for method, fid in ANCHORS.items():
            rows.append(
                {"method": method, "variant": "-", "replicate": rep, "tables": "main"}
                | {"reverse": "-", "denoise": "-", "norm_control": "-", "guidance": "-"}
                | {"feature_loss": "-", "nfe": math.nan, "fid_domain": fid[rep]}
                | {"is_domain": 1.0, "kid_domain": 0.5, "latency_ms_b1": math.nan}
            )
        for variant, (method, tables, rev, den, norm, g, feat, nfe, fid) in VARIANTS.items():
            tables += ",guidance" if variant in FORM else ""
            rows.append(
                {"method": method, "variant": "default" if variant == method else variant}
                | {"replicate": rep, "tables": tables}
                | {"reverse": rev, "denoise": den, "norm_control": norm, "guidance": g}
                | {"feature_loss": feat, "nfe": float(nfe), "sequential_steps": float(nfe)}
                | {"params": 933248, "fid_domain": fids.get(variant, fid)[rep]}
                | {"is_domain": 2.0 + rep, "kid_domain": 0.1, "precision_domain": 0.5}
                | {"recall_domain": 0.5, "latency_ms_b1": 100.0 * (rep + 1) + len(variant)}
                | {"throughput_img_s": 50.0, "speedup_b1": 2.0 + rep, "speedup_tput": 1.0}
                | {"conditional": "yes" if variant in CONDITIONAL else "no"}
                | {"guidance_form": FORM.get(variant, "-")}
                | {"extra_column_to_ignore": "x"}
            )
    return pd.DataFrame(rows)


def run_dir(tmp_path: Path, frame: pd.DataFrame, status: str = "complete") -> Path:
    d = tmp_path / "run"
    d.mkdir()
    frame.to_csv(d / "results.csv", index=False)
    config = {"name": "toy", "eval": {"num_samples": 123}, "metrics": {"extractors": ["domain"]}}
    (d / "run.json").write_text(json.dumps({"status": status, "config": config}))
    return d


def tables(tmp_path: Path, frame: pd.DataFrame, capsys) -> tuple[Path, str]:
    d = run_dir(tmp_path, frame)
    code = main(["tables", str(d)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.strip() == str(d / "tables" / "tables.md")
    return d / "tables", (d / "tables" / "tables.md").read_text()


def line(md: str, start: str) -> str:
    (hit,) = [s for s in md.splitlines() if s.startswith(start)]
    return hit


def cells(md: str, method: str, variant: str) -> list[str]:
    """The cells of the first markdown table row of ``method`` and ``variant``."""
    rows = [[c.strip() for c in s.strip("|").split("|")] for s in md.splitlines() if s[:1] == "|"]
    return next(r for r in rows if r[:2] == [method, variant])


def test_files_and_aggregation(tmp_path, capsys):
    out, md = tables(tmp_path, results(), capsys)
    names = {"tables.md", "main.csv", "reverse.csv", "denoise.csv", "ablations.csv", "guidance.csv"}
    assert {p.name for p in out.iterdir()} == names
    main_csv = pd.read_csv(out / "main.csv")
    assert list(main_csv["variant"]) == ["default"] * 3 + ["-"] * 2  # not merged
    assert list(main_csv["method"]) == ["tarflow", "tarflow_score", "biflow", *ANCHORS]
    assert list(main_csv["fid_domain_mean"][:3]) == pytest.approx([31.0, 21.0, 11.0])
    biflow = main_csv.set_index("method").loc["biflow"]
    assert biflow["replicates"] == 2 and biflow["nfe"] == 1
    assert biflow["fid_domain_mean"] == pytest.approx(11.0)
    assert biflow["fid_domain_std"] == pytest.approx(math.sqrt(2))  # ddof=1 of (10, 12)
    assert biflow["is_domain_mean"] == pytest.approx(2.5)
    assert biflow["latency_ms_b1_median"] == pytest.approx(150.0 + len("biflow"))
    noise = main_csv.set_index("method").loc["anchor: gaussian noise"]
    assert noise["fid_domain_mean"] == pytest.approx(410.0)
    assert noise["fid_domain_std"] == pytest.approx(math.sqrt(200))
    assert "extra_column_to_ignore" not in main_csv.columns
    assert len(pd.read_csv(out / "ablations.csv")) == 9
    row = cells(md, "biflow", "default")
    assert row[:6] == ["biflow", "default", "2", "1", "11.00 ± 1.41", "2.50 ± 0.71"]
    assert row[6:] == ["156.0", "50", "2.5x", "0.93"]  # median ms, img/s, speedup, M params
    assert "`domain` extractor" in md and "123 images" in md and "2 replicates" in md
    for heading in ("(`main`)", "(`reverse`)", "(`denoise`)", "(`ablations`)"):
        assert heading in md


def test_reverse_ordering_holds(tmp_path, capsys):
    _, md = tables(tmp_path, results(), capsys)
    assert (
        "FID(aligned) < FID(naive) < FID(exact) < FID(distilled) **holds** in all 2 comparisons"
        in md
    )
    aligned = line(md, "- aligned vs naive")
    assert "(denoise=learned)" in aligned and "gap +5.00 vs spread 1.41" in aligned
    assert aligned.endswith("**holds**.")
    naive = line(md, "- naive vs exact")
    assert "denoise differs: learned vs none" in naive and naive.endswith("**holds**.")
    # denoise: learned vs score across reverse groups, score vs none within reverse=exact
    assert line(md, "- score vs none").startswith("- score vs none (reverse=exact)")
    assert "**holds** in all 2 comparisons" in md.split("(`denoise`)")[1]


def test_reverse_ordering_does_not_hold(tmp_path, capsys):
    _, md = tables(tmp_path, results({"biflow_naive": (40, 42)}), capsys)
    assert "FID(aligned) < FID(naive) < FID(exact) < FID(distilled) **does not hold**: 1 of 2" in md
    assert line(md, "- aligned vs naive").endswith("**holds**.")
    naive = line(md, "- naive vs exact")
    assert "gap -10.00 vs spread 1.41" in naive and naive.endswith("**does not hold**.")


def test_gap_within_spread_is_not_resolved(tmp_path, capsys):
    _, md = tables(tmp_path, results({"biflow_naive": (10, 20)}), capsys)
    aligned = line(md, "- aligned vs naive")
    assert "gap +4.00 vs spread 7.07" in aligned
    assert aligned.endswith("**within the spread (not resolved by 2 seeds)**.")
    assert "is **within the spread (not resolved by these seeds)** in 1 of 2" in md


def test_denoise_ordering_does_not_hold(tmp_path, capsys):
    _, md = tables(tmp_path, results({"tarflow_score": (40, 41)}), capsys)
    denoise = md.split("(`denoise`)")[1].split("(`ablations`)")[0]
    assert "FID(learned) < FID(score) < FID(none) **does not hold**: 1 of 2" in denoise
    assert line(denoise, "- score vs none (reverse=exact)").endswith("**does not hold**.")


def test_ablation_pairs(tmp_path, capsys):
    _, md = tables(tmp_path, results(), capsys)
    norm = line(md, "- **norm_control**")
    assert "with norm_control=on (`biflow`, NFE 1)" in norm
    assert "with norm_control=off (`biflow_nonorm`, NFE 1)" in norm
    assert "gap +2.50 vs spread 1.41" in norm and norm.endswith("**lower FID with it**.")
    assert not [s for s in md.splitlines() if s.startswith("- **guidance**")]  # its own table
    feat = line(md, "- **feature_loss**")
    assert "feature_loss=vgg (`biflow_feat`" in feat and "gap -1.00" in feat
    assert feat.endswith("**within the spread (not resolved by 2 seeds)**.")
    assert "Feature loss network: `vgg`" in md


def test_guidance_claims(tmp_path, capsys):
    _, md = tables(tmp_path, results(), capsys)
    guidance = md.split("(`guidance`)")[1]
    tar = line(guidance, "- `tarflow`, guidance inference")
    assert "w=2: 26.00" in tar and "best w = 2" in tar and "(`tarflow_cond`)" in tar
    assert tar.endswith("**holds**.")  # 31 -> 26, gap 5 > 1.41
    bi = line(guidance, "- `biflow`, guidance training")
    assert "w=1.5: 9.25" in bi and bi.endswith("**holds**.")  # 11 -> 9.25 vs spread 1.41
    assert "- `biflow_score`, guidance training" in guidance  # another sampler: its own line
    assert "6.79 (1 NFE)" in cells(guidance, "biflow", "biflow_cfg")
    assert "6.79" not in cells(guidance, "biflow", "biflow_cond")  # unguided: no paper number


def test_one_replicate_says_na(tmp_path, capsys):
    out, md = tables(tmp_path, results(replicates=1), capsys)
    assert "10.00 ± n/a" in md and "1 replicate " in md
    assert "spread n/a (one replicate" in line(md, "- aligned vs naive")
    assert pd.read_csv(out / "main.csv")["fid_domain_std"].isna().all()


def test_missing_table_is_skipped(tmp_path, capsys):
    frame = results()
    frame["tables"] = (
        frame["tables"].str.replace(",ablations", "").str.replace("^ablations", "main", regex=True)
    )
    out, md = tables(tmp_path, frame, capsys)
    assert "No row of this run belongs to the `ablations` table: skipped." in md
    empty = pd.read_csv(out / "ablations.csv")
    assert empty.empty and "fid_domain_mean" in empty.columns


def test_out_folder(tmp_path, capsys):
    d = run_dir(tmp_path, results())
    assert main(["tables", str(d), "--out", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "reverse.csv").is_file()
    assert not (d / "tables").exists()
    capsys.readouterr()


def test_missing_results_csv_exits_2_naming_the_path(tmp_path, capsys):
    d = run_dir(tmp_path, results())
    (d / "results.csv").unlink()
    assert main(["tables", str(d)]) == 2
    err = capsys.readouterr().err
    assert str(d / "results.csv") in err and err.count("\n") == 1


def test_unfinished_run_exits_2(tmp_path, capsys):
    d = tmp_path / "x"
    run_dir(tmp_path, results(), status="running").rename(d)
    assert main(["tables", str(d)]) == 2
    assert "status 'running'" in capsys.readouterr().err
