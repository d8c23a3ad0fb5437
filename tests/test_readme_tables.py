"""The README's generated blocks: the paper-scale table from benchmarks/paper_scale.py's JSON."""

import json

import pytest

from protoad_lib.report.readme_tables import PAPER_SCALE_BLOCK, paper_scale_markdown, with_table


def test_paper_scale_table_states_each_notebook_the_pauses_and_the_projection(tmp_path):
    result = {"notebooks": [{"notebook": "01", "seconds": 22.8, "peak_rss_gib": 0.96},
                            {"notebook": "05", "seconds": 1997.5, "peak_rss_gib": 21.4, "paused_s": 1391}],
              "total_s": 2020.3, "prn_one_epoch": {"fit_s": 170.2, "epoch_s": 96.4, "n_train": 391},
              "projected_paper_run_cpu": {"without_prn_h": 20.5, "prn_h": 31.0, "total_h": 51.5,
                                          "prn_epochs_full": 30, "prn_epochs_measured": 1}}
    path = tmp_path / "paper_scale.json"
    path.write_text(json.dumps(result))
    table = paper_scale_markdown(path)
    assert "| 01 data | 23 s | 1.0 GiB |" in table
    assert "| 05 evaluation | 1,998 s (33 min), plus 1,391 s paused, not counted | 21.4 GiB |" in table
    assert "| all seven | 2,020 s (34 min) | |" in table
    assert "One PRN epoch on the 391 training images: 96 s" in table
    assert "**51.5 h**, of which 31.0 h are PRN's 30-epoch CPU schedule (20.5 h without" in table


def test_a_partial_run_has_no_total_and_no_projection(tmp_path):
    path = tmp_path / "paper_scale.json"
    path.write_text(json.dumps({"notebooks": [{"notebook": "02", "seconds": 244.7, "peak_rss_gib": 9.84},
                                              {"notebook": "07", "seconds": 7260.0, "peak_rss_gib": 20.1,
                                               "interrupted_s": 3600.4}]}))
    table = paper_scale_markdown(path)
    assert "| 02 features | 245 s | 9.8 GiB |" in table
    assert "| 07 ablations | 7,260 s (121 min), of which 3,600 s before an interruption | 20.1 GiB |" in table
    assert "all seven" not in table and "Projected" not in table


def test_a_resumed_notebook_states_the_work_it_redid(tmp_path):
    path = tmp_path / "paper_scale.json"
    path.write_text(json.dumps({"notebooks": [{"notebook": "07", "seconds": 7260.0, "peak_rss_gib": 20.1,
                                               "interrupted_s": 782.6, "lost_s": 401.3}]}))
    assert ("| 07 ablations | 7,260 s (121 min), of which 783 s before an interruption (401 s of it redone after "
            "resuming, left out of the projection) | 20.1 GiB |") in paper_scale_markdown(path)


def test_a_block_is_replaced_between_its_own_markers_only():
    readme = ("a\n<!-- results-table:start -->\nold results\n<!-- results-table:end -->\n"
              "b\n<!-- paper-scale:start -->\nold cost\n<!-- paper-scale:end -->\nc\n")
    updated = with_table(readme, "new cost", PAPER_SCALE_BLOCK)
    assert "old results" in updated and "old cost" not in updated and "\nnew cost\n" in updated
    with pytest.raises(ValueError, match="no <!-- missing:start -->"):
        with_table(readme, "x", "missing")
