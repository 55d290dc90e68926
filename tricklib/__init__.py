"""Deep Learning Tricks: the small shared library behind the course book.

Every trick is plain PyTorch you can paste into your own training loop; the
book's harness (:func:`fit`, :func:`compare`) only uses them. Modules follow the
parts of the book: ``debug``, ``checkpoint``, ``scaling``, ``gradients`` (the recipe),
``schedules``, ``optim``, ``search``, ``precision`` (optimisation), ``regularize``,
``layers``, ``losses``, ``boxes``, ``nms``, ``detection_eval``, ``scenes`` (detection),
``segmentation``, ``averaging``; ``runtime``, ``data``, ``harness``, ``measure``, ``viz``
and ``knobs`` are shared by all chapters.
"""
from .averaging import SWA, ModelEMA, ensemble_probs, greedy_soup, interpolate, precise_bn, uniform_soup
from .boxes import box_iou, ciou_loss, diou_loss, generalized_box_iou, giou_loss, iou_loss
from .checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state, temp_path
from .debug import (assert_batch_independent, batch_leak, channel_dependency_matrix, dependency_matrix,
                    describe_batch, expected_initial_loss, first_nonfinite, gradcheck_module, init_final_bias,
                    input_independent_baseline, out_of_range, overfit_one_batch, show_batch, unnormalize)
from .detection_eval import average_precision, detection_metrics
from .data import SHAPE_CLASSES, Shapes, digits, make_imbalanced, render_shapes, shapes, split, thin_shapes, toy_2d
from .gradients import GradNormRecorder, dead_fraction, layer_grad_norms, linear_baseline, majority_baseline
from .harness import Callback, EarlyStopping, History, Snapshots, TrainState, accuracy, batches, evaluate, fit, predict
from .knobs import Knob, knob
from .layers import GroupNorm, Residual, attention, channel_shuffle, dynamic_conv, zero_init_residual
from .losses import focal_loss, ohem_loss, reduce_loss, token_loss, token_weights, topk_loss
from .models import mlp, postact_residual_mlp, residual_mlp
from .measure import (Comparison, Paired, Sweep, calibration_bins, check_claims, compare,
                      expected_calibration_error, median_times_ms, sign_flip_p_value, sweep, verdicts)
from .nms import batched_soft_nms, soft_nms
from .optim import adam_step, flood, param_groups
from .regularize import (adversarial_batch_transform, cutmix, cutout, drop_block, drop_connect, drop_path, fgm, fgsm,
                         l1_prox_step, label_smoothing_cross_entropy, logit_gap, mixup, optimal_logit_gap, pgd,
                         r_drop_loss, smooth_labels, soft_threshold)
from .runtime import by_scale, get_device, get_scale, progress, seed_everything, seeds
from .scenes import crowded_detections, crowded_scene, simulate_detections
from .segmentation import (boundary_iou, mask_boundary, mask_iou, point_sample, uncertain_grid_points,
                           uncertain_points)
from .search import grid_points, random_points, sobol_points
from .scaling import Atan, Log, MinMax, Scaler, Standardize
from .precision import amp_step, autocast_dtype, lost_update_fraction, overflow_fraction, underflow_fraction
from .schedules import ScheduleCheck, check_schedule, cosine, linear_scaling, restart_steps, sgdr, step_decay, warmup
from .viz import (bars, draw_boxes, paired_diffs, payoff, plot_curves, plot_schedules, reliability_diagram,
                  use_book_style)

__version__ = "0.1.0"

__all__ = [
    "mlp", "residual_mlp", "postact_residual_mlp", "zero_init_residual",
    "ModelEMA", "SWA", "greedy_soup", "interpolate", "precise_bn", "uniform_soup",
    "GroupNorm", "Residual", "attention", "channel_shuffle", "dynamic_conv",
    "ohem_loss", "topk_loss", "point_sample", "uncertain_points", "uncertain_grid_points", "mask_iou", "mask_boundary",
    "boundary_iou", "thin_shapes",
    "cutmix", "cutout", "drop_block", "drop_connect", "drop_path", "mixup", "r_drop_loss", "soft_threshold", "l1_prox_step",
    "fgm", "fgsm", "pgd", "adversarial_batch_transform",
    "assert_batch_independent", "batch_leak", "channel_dependency_matrix", "dependency_matrix", "describe_batch",
    "expected_initial_loss",
    "first_nonfinite", "gradcheck_module", "init_final_bias", "input_independent_baseline", "out_of_range",
    "overfit_one_batch", "show_batch", "unnormalize",
    "GradNormRecorder", "dead_fraction", "layer_grad_norms", "linear_baseline", "majority_baseline",
    "Atan", "Log", "MinMax", "Scaler", "Standardize",
    "CheckpointError", "load_checkpoint", "rng_state", "save_checkpoint", "set_rng_state", "temp_path",
    # boxes and detection
    "average_precision", "batched_soft_nms", "box_iou", "crowded_detections", "crowded_scene", "detection_metrics",
    "simulate_detections", "soft_nms", "generalized_box_iou", "iou_loss", "giou_loss", "diou_loss", "ciou_loss",
    "adam_step", "flood", "grid_points", "param_groups", "random_points", "sobol_points",
    "SHAPE_CLASSES", "Callback", "Comparison", "EarlyStopping", "History", "Knob", "Paired", "Shapes", "Snapshots", "TrainState",
    "accuracy", "bars", "batches", "by_scale", "calibration_bins", "check_claims", "compare", "cosine", "digits", "draw_boxes",
    "ensemble_probs", "evaluate", "expected_calibration_error", "fit", "focal_loss", "get_device", "get_scale",
    "knob", "label_smoothing_cross_entropy", "logit_gap", "make_imbalanced", "median_times_ms", "optimal_logit_gap",
    "paired_diffs", "payoff", "Sweep", "sweep", "use_book_style",
    "plot_curves", "plot_schedules", "predict", "progress", "reduce_loss", "token_loss", "token_weights", "reliability_diagram", "render_shapes",
    "restart_steps", "seed_everything", "seeds", "sgdr", "sign_flip_p_value", "verdicts", "shapes", "smooth_labels", "split", "step_decay", "toy_2d",
    # schedules (warm-up, scaling, checks) and precision
    "ScheduleCheck", "amp_step", "autocast_dtype", "check_schedule", "linear_scaling", "lost_update_fraction",
    "overflow_fraction", "underflow_fraction", "warmup",
]
