"""Lessons: short plain-language texts, each with presets that load into the Train page.

A lesson has one preset, or two (`..._a.yaml` / `..._b.yaml`) when it compares two settings;
`variants` names them. `knobs` are the dotted config paths the lesson is about (class mode
shows only those controls); a knob may exist in one variant only (e.g. a cross-stitch param).
Presets live in examples/lessons/ and are ordinary configs: everything goes through
`mtl_core.config.load_config`. Each is sized for tens of seconds on a laptop CPU, start-up
included (a foreground `train` of relatedness_a took 43.6 s end to end on a loaded 2-core
machine, issue 13).

The synthetic problems are small, so a result can change with the seed; several lessons say
so, because checking a second seed is itself part of doing MTL experiments well.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtl_core.config import ExperimentConfig, load_config
from mtl_core.pareto import DEFINITION

LESSONS_DIR = Path(__file__).resolve().parent.parent / "examples" / "lessons"
_MISSING = object()


@dataclass(frozen=True)
class Lesson:
    id: str
    title: str
    text: str  # markdown, plain language
    presets: tuple[str, ...]  # file names in LESSONS_DIR
    variants: tuple[str, ...]  # a short label per preset, e.g. ("static", "uncertainty")
    look_for: tuple[str, ...]
    question: str
    knobs: tuple[str, ...]  # dotted config paths, e.g. "data.params.correlation"

    @property
    def preset_paths(self) -> list[Path]:
        return [LESSONS_DIR / name for name in self.presets]


LESSONS: list[Lesson] = [
    Lesson(
        id="data_efficiency",
        title="Little data: share or go alone?",
        text=(
            "Multi-task learning often helps most when every task has only a few labelled "
            "examples. Here two closely related tasks have about 90 training examples each. "
            "With hard sharing (preset A) the shared trunk is trained by both tasks' errors, "
            "so each task gets roughly twice the evidence about the features they both need, "
            "and the trunk cannot easily memorise quirks that only help one task. Preset B "
            "gives each task its own network of the same size, trained on the same examples. "
            "With plenty of data the advantage of sharing usually shrinks, because each task "
            "alone has enough examples."
        ),
        presets=("data_efficiency_a.yaml", "data_efficiency_b.yaml"),
        variants=("hard sharing", "single task"),
        look_for=(
            "Train the single-task baselines of A and read Δm: below 0 means sharing helped "
            "(it did in 5 of 5 seeds when we checked).",
            "Test MSE of both tasks in A and B (lower is better): this comparison is noisier, "
            "B won it in 2 of 5 seeds, so look at a second seed before concluding.",
            "The gap between the training and the validation loss: a large gap means the "
            "model memorises the few examples (overfitting).",
            "Raise data.train_fraction to 0.5 or 1.0 and compare again: does the gap close?",
        ),
        question=("Why should a second task help more when there are 90 examples than when "
                  "there are 1,800?"),
        knobs=("data.train_fraction", "model.architecture"),
    ),
    Lesson(
        id="relatedness",
        title="Related tasks help, unrelated tasks interfere",
        text=(
            "Hard sharing assumes the tasks need similar features. In the synthetic_mmoe suite "
            "(the generator of the MMoE paper, Ma et al. 2018) one slider, the correlation, "
            "sets how related the two tasks are: 1 means the same underlying function with "
            "different noise, 0 means unrelated functions. The shared trunk here ends in just "
            "two units, so the tasks must agree on what those two numbers mean. When the tasks "
            "are related, each task's errors improve the shared features for the other; when "
            "they are not, they fight over the same units and both can end up worse than "
            "alone. Doing worse because of sharing is called negative transfer."
        ),
        presets=("relatedness_a.yaml", "relatedness_b.yaml"),
        variants=("correlation 1.0", "correlation 0.0"),
        look_for=(
            "Δm against the single-task baselines for A and for B: below 0 sharing helped, "
            "above 0 it hurt.",
            "Move data.params.correlation in between (0.9, 0.5): where does Δm cross 0?",
            "The gradient cosine between the two tasks: is it different for A and B?",
        ),
        question=("At which correlation does sharing stop paying off, and would a wider trunk "
                  "move that point?"),
        knobs=("data.params.correlation", "model.trunk.layers"),
    ),
    Lesson(
        id="loss_scales",
        title="Loss scales: when one task shouts",
        text=(
            "The total loss is L = w1·L1 + w2·L2, so a task whose loss is a hundred times "
            "larger gets roughly a hundred times the say over the shared layers, whatever its "
            "units mean. Here the distance task is measured in units ten times smaller "
            "(distance_scale 10), so its numbers are ten times larger and its squared-error "
            "loss about a hundred times larger than the xor task's cross-entropy. With plain "
            "SGD and weights 1 and 1 (preset A) the distance gradients dominate the shared "
            "layers, and what we saw is not a wobble but a stall: in 4 of 5 seeds the distance "
            "task ends up predicting the mean distance (its test MSE equals the variance of "
            "the targets). Uncertainty weighting (Kendall et al. 2018, preset B) learns a "
            "noise level σ² per task and multiplies its loss by 1/(2σ²), which divides the "
            "large loss back down. Adam hides part of the problem because it rescales every "
            "parameter's step, which is why this lesson uses SGD."
        ),
        presets=("loss_scales_a.yaml", "loss_scales_b.yaml"),
        variants=("static", "uncertainty"),
        look_for=(
            "The training losses of A: how many times larger is the distance loss than the "
            "xor loss? Compare A's distance test MSE with the variance of the distance "
            "targets (100 in these units): equal means it only learned the mean.",
            "The effective task weights of B over time: the distance weight falls far below "
            "the xor weight.",
            "xor accuracy and distance MSE in A and B.",
            "Set data.params.distance_scale back to 1: does static weighting work again?",
        ),
        question=("If you had to set the weights by hand instead, how would you pick them so "
                  "both tasks get a fair share?"),
        knobs=("weighting.method", "data.params.distance_scale", "tasks"),
    ),
    Lesson(
        id="gradient_conflict",
        title="Gradient conflict: when tasks pull apart",
        text=(
            "Every task's loss has a gradient on the shared parameters: the direction in which "
            "that task wants them to move. The cosine between two tasks' gradients says "
            "whether they agree (near 1), ignore each other (near 0) or conflict (below 0, "
            "where a step that helps one task hurts the other). Preset A trains two unrelated "
            "tasks, xor and spiral, with the plain weighted sum. Preset B uses PCGrad (Yu et "
            "al. 2020), which removes from each task's gradient the part that points against "
            "the other's whenever they conflict; MGDA (Sener and Koltun 2018) instead looks "
            "for a direction that lowers every loss at once. On these two tasks the cosine "
            "mostly hovers around 0 (below 0 at about half of the logged steps, noise rather "
            "than conflict), so PCGrad has little to remove and it did not beat static on "
            "average over five seeds. To see real conflict, open the Gradient geometry page: "
            "two tasks over two parameters, where each method's path and update can be "
            "watched."
        ),
        presets=("gradient_conflict_a.yaml", "gradient_conflict_b.yaml"),
        variants=("static", "pcgrad"),
        look_for=(
            "The gradient cosine plot: how often is it below 0, and is it far from 0 or "
            "just noise around it?",
            "On the Gradient geometry page, problem 'Strong conflict': where do static, "
            "PCGrad and MGDA go from the same start, and what do their arrows show?",
            "xor and spiral accuracy and their decision boundaries in A and B.",
            "Switch weighting.method to mgda: does the total loss fall faster or slower?",
            "Run A with another seed: is the difference between A and B larger than the "
            "difference between two seeds?",
        ),
        question=("If the cosine is often negative, does that prove these two tasks should not "
                  "share a network?"),
        knobs=("weighting.method", "seed"),
    ),
    Lesson(
        id="branch_point",
        title="How much to share",
        text=(
            "Hard sharing does not have to share the whole trunk. With shared_layers = k the "
            "first k layers are shared and every task gets its own copy of the rest: the "
            "network branches after layer k. Early layers tend to learn general features and "
            "later layers more task-specific ones, so a late branch shares more and saves "
            "parameters, while an early branch gives each task more room of its own. "
            "Setting shared_layers to 0 shares nothing: the same architecture as separate "
            "single-task networks, but not the same results, because the two networks start "
            "from different random weights (they are drawn in a different order), and on a "
            "problem this small that alone can change a task's test MSE tenfold (0.064 "
            "against 0.609 for the baseline, seed 2). "
            "Here the trunk ends in a 2-unit layer and the tasks are only moderately related "
            "(correlation 0.5), so where they branch matters."
        ),
        presets=("branch_point.yaml",),
        variants=("shared_layers 3",),
        look_for=(
            "The architecture diagram: which blocks are shared, and how the parameter count "
            "changes with the slider.",
            "Test MSE of both tasks for shared_layers 3, 2, 1 and 0.",
            "Repeat with data.params.correlation 1.0 and 0.0: does the best branch point "
            "move?",
        ),
        question="Why might the last layers be the ones that should not be shared?",
        knobs=("model.params.shared_layers", "data.params.correlation"),
    ),
    Lesson(
        id="soft_vs_hard",
        title="Soft vs hard sharing",
        text=(
            "Hard sharing makes the tasks use exactly the same layers. Soft sharing gives "
            "every task its own network and lets the networks exchange information instead: a "
            "cross-stitch network (Misra et al. 2016) mixes the tasks' activations after each "
            "layer with a small learned matrix. A large diagonal means each task mostly keeps "
            "to its own network; large off-diagonal entries mean the tasks borrow from each "
            "other. Soft sharing costs about one network per task in parameters, but it learns "
            "how much to share instead of you having to guess. Preset A is hard sharing, "
            "preset B cross-stitch, on moderately related tasks (correlation 0.5)."
        ),
        presets=("soft_vs_hard_a.yaml", "soft_vs_hard_b.yaml"),
        variants=("hard sharing", "cross-stitch"),
        look_for=(
            "The cross-stitch mixing matrices of B: which entries moved away from their "
            "start during training?",
            "The parameter counts of A and B in the architecture diagram.",
            "Test MSE of both tasks in A and B, and Δm against the single-task baselines.",
        ),
        question=("If the learned mixing matrices ended up almost the identity, what would "
                  "that tell you about the two tasks?"),
        knobs=("model.architecture", "model.params.init_self", "data.params.correlation"),
    ),
    Lesson(
        id="one_backbone",
        title="One backbone, two jobs",
        text=(
            "The textbook vision example of multi-task learning is one backbone with two "
            "heads: one says what is in the image (classification), the other where it is "
            "(localisation, a box). Here a digit sits somewhere on a larger canvas; preset A "
            "shares one convolutional trunk between the digit head and the box head, preset "
            "B trains a separate network for each job on the same images. Both jobs need "
            "the same strokes found first, so sharing gives each head features trained by "
            "twice the error signal, at half the parameters. The trunk ends in feature maps, "
            "not a flat vector, because a box head needs to know where the features are."
        ),
        presets=("one_backbone_a.yaml", "one_backbone_b.yaml"),
        variants=("shared trunk", "a network per task"),
        look_for=(
            "Test accuracy of digit and test IoU of box in A and B (higher is better for "
            "both).",
            "The boxes on the Predictions page: green is the truth, magenta the model's box.",
            "Train the single-task baselines of A and read Δm: below 0 means sharing helped.",
            "The parameter counts of A and B in the architecture diagram.",
        ),
        question=("Would you expect sharing to help more or less if the box head only had "
                  "to say which half of the canvas the digit is in?"),
        knobs=("model.architecture", "model.trunk.type", "model.trunk.trainable"),
    ),
    Lesson(
        id="choosing_weights",
        title="Choosing the weights with a sweep",
        text=(
            "With static weighting you set w1 and w2 by hand, and the result can depend a lot "
            "on them, so treat them like any other hyperparameter: train once per setting and "
            "compare on the validation set, never on the test set. The Weight sweep page "
            "trains a grid of weights with w1 + w2 = 1 and plots each run's two validation "
            f"metrics (1,000 validation points, so accuracies move in steps of 0.001). Here "
            f"{DEFINITION}; which front run to pick depends on which task matters more, and "
            "the sweep marks the one with the best average validation score. Only then look "
            "at the test set: the page says plainly when it disagrees with the validation "
            "choice, as it can when the differences between weights are as small as the "
            "noise of a finite sample. Adaptive methods such as uncertainty weighting can be "
            "added as extra points, to see whether they reach the front without any tuning."
        ),
        presets=("choosing_weights.yaml",),
        variants=("base config",),
        look_for=(
            "How much each task's metric changes from one end of the grid to the other.",
            "Which points form the front; are the ends (a weight of 0 for one task) on it?",
            "Where the adaptive methods land: on the front, behind it, or beyond it?",
        ),
        question="Why must the weights be chosen on the validation set and not the test set?",
        knobs=("tasks", "weighting.method"),
    ),
]


def get_lesson(lesson_id: str) -> Lesson:
    for lesson in LESSONS:
        if lesson.id == lesson_id:
            return lesson
    raise KeyError(f"unknown lesson {lesson_id!r}; "
                   f"choose one of: {', '.join(lesson.id for lesson in LESSONS)}")


def load_preset(lesson: Lesson | str, variant: int = 0) -> ExperimentConfig:
    """The validated config of one of the lesson's presets (0 = A, 1 = B)."""
    if isinstance(lesson, str):
        lesson = get_lesson(lesson)
    if not 0 <= variant < len(lesson.presets):
        raise IndexError(f"lesson {lesson.id!r} has {len(lesson.presets)} preset(s); "
                         f"variant {variant} does not exist")
    return load_config(lesson.preset_paths[variant])


def knob_value(cfg: ExperimentConfig | dict[str, Any], path: str) -> Any:
    """The value at a dotted config path (list items by index, e.g. "tasks.0.weight");
    KeyError when the path does not exist in this config."""
    node: Any = cfg.to_dict() if isinstance(cfg, ExperimentConfig) else cfg
    for part in path.split("."):
        if isinstance(node, dict):
            node = node.get(part, _MISSING)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            node = _MISSING
        if node is _MISSING:
            raise KeyError(f"no config field {path!r}")
    return node
