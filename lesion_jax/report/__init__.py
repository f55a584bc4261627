"""What runs leave for a reader: the paper's tables and figures, per run and across runs.

- `tables`: results.md (Table 3 layout), per_image.csv, and Table 2 across the runs of a sweep;
- `figures`: the threshold and training curves, overlays of the best and worst test images, and
  Fig. 1-style grids, in the paper's Fig. 1 colours (yellow TP, red FP, green FN, black TN);
- `compare`: runs side by side with per-image paired differences and bootstrap 95% CIs;
- `overlays`: the overlays `lesion_jax.predict` writes (a prediction in blue, or its comparison
  with a truth in the Fig. 1 colours, below a key).

This package only reads results (results.json, per_image.csv, metrics.jsonl, checkpoints for the
Fig. 1 grids) and writes files; it never trains.

    python -m lesion_jax.report compare RUN_A RUN_B [--names "Exp 1" "Exp 2"] [--out DIR]
    python -m lesion_jax.report table SWEEP_OR_RUN [...] [--out DIR]
"""
from lesion_jax.report.cli import main
from lesion_jax.report.compare import (bootstrap_mean_ci, comparison_text, default_names,
                                       differences_table, paired_differences,
                                       write_comparison_report)
from lesion_jax.report.figures import (FIG1_COLOURS, comparison_image, overlay_picks,
                                       pick_cases, plot_fig1_grid, plot_threshold_curve,
                                       plot_training_curves, read_metrics, restart_steps,
                                       safe_name, write_fig1, write_overlays)
from lesion_jax.report.tables import (ARCHITECTURES, LOSS_LABELS, METRIC_COLUMNS, PAPER_TABLE3,
                                      VALIDATION_PER_IMAGE, VALIDATION_SUBSET,
                                      format_params, paper_table3, pretraining_label,
                                      read_per_image, results_table, run_folders, run_summary,
                                      table2_entry, table2_from_workdirs, table2_markdown,
                                      table2_subsets, table_rows, write_per_image,
                                      write_run_report, write_table2)
from lesion_jax.workdir import read_results

__all__ = [
    "ARCHITECTURES", "FIG1_COLOURS", "LOSS_LABELS", "METRIC_COLUMNS", "PAPER_TABLE3",
    "VALIDATION_PER_IMAGE", "VALIDATION_SUBSET",
    "bootstrap_mean_ci", "comparison_image", "comparison_text", "default_names",
    "differences_table", "format_params", "main", "overlay_picks", "paired_differences",
    "paper_table3", "pick_cases", "plot_fig1_grid", "plot_threshold_curve",
    "plot_training_curves", "pretraining_label", "read_metrics", "read_per_image",
    "read_results", "restart_steps", "results_table", "run_folders", "run_summary", "safe_name",
    "table2_entry", "table2_from_workdirs", "table2_markdown", "table2_subsets", "table_rows",
    "write_comparison_report", "write_fig1", "write_overlays", "write_per_image",
    "write_run_report", "write_table2",
]
