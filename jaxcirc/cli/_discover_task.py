"""`jaxcirc discover`'s model, task and choices: the embedded induction model or `--model`, and
the induction, IOI or greater-than task with the data its abstraction is calibrated on."""

from __future__ import annotations

import numpy as np

METHODS = ("eap", "eap-ig", "acdc", "circuit-lasso")
LABELS = {"eap": "EAP", "eap-ig": "EAP-IG", "acdc": "ACDC", "circuit-lasso": "CircuitLasso"}
TASKS = ("induction", "ioi", "greater-than")
CALIBRATION = 16  # induction prompts the pruning is calibrated on, at least
SMALL = 10_000_000  # parameters: below this, compilation dominates and XLA's passes are skipped
METRICS = {
    "induction": "mean log-probability of the induction token over the second half",
    "ioi": "logit difference, indirect object minus subject, at the last token",
    "greater-than": "probability of the years above the start year minus those at or below it",
}


class _Setup:
    """The model, the task (clean, corrupt, metric), position labels, and the data the
    abstraction is calibrated and evaluated on."""

    def __init__(self, args):
        import jax.numpy as jnp

        from .. import zoo
        from .._finite import check_finite_weights

        parser = args.parser
        if args.model is None:
            self.model, self.name = zoo.induction_model(), "embedded induction_attn_only_2l"
        else:
            from .. import load

            self.model, self.name = load(args.model), str(args.model)
        check_finite_weights(self.model, f"model {self.name}")
        cfg = self.model.cfg
        self.metric_text = METRICS[args.task]
        if args.task == "induction":
            limit = min(cfg.n_ctx, cfg.d_vocab) // 2
            if not 2 <= args.half_len <= limit:
                parser.error(
                    f"argument --half-len: need 2..{limit} for this model (n_ctx={cfg.n_ctx}, "
                    f"d_vocab={cfg.d_vocab}); got {args.half_len}"
                )
            task = zoo.induction_task(args.n_prompts, args.half_len, args.seed, d_vocab=cfg.d_vocab)
            held = zoo.induction_task(
                args.n_prompts, args.half_len, args.seed + 1, d_vocab=cfg.d_vocab
            )
            L = args.half_len
            self.labels = [f"{1 + i // L}:A{i % L}" for i in range(2 * L)]
            self.position_title = "position (copy:token; copy 1 differs in the corrupt run)"
            weights = task.metric.weights[None] > 0
            # calibration prompts of the pruning (folding needs enough rows) and their labels:
            # the next token wherever the metric reads, else ignored (-1)
            cal = zoo.induction_task(
                max(args.n_prompts, CALIBRATION), L, args.seed + 2, d_vocab=cfg.d_vocab
            )
            self.prune_tokens = cal.clean
            self.prune_labels = jnp.where(weights, cal.metric.targets, -1)
            self.eval_tokens, self.eval_labels = held.clean, held.clean[:, -1]
            self.position = -2  # the last predicted position: it predicts the last token
            self.read = np.asarray(weights[0])  # positions the metric reads
        else:
            from .. import tasks
            from ..io import load_tokenizer

            source = args.tokenizer or args.model
            if source is None:
                parser.error(
                    f"argument --task: {args.task!r} needs a tokenizer; give --model PATH "
                    "(a Hugging Face folder or .gguf) or --tokenizer PATH, or use --task induction"
                )
            tokenizer = load_tokenizer(source)
            make = {"ioi": tasks.ioi, "greater-than": tasks.greater_than}[args.task]
            task = make(tokenizer, args.n_prompts, seed=args.seed)
            self.labels = list(task.labels) or [str(i) for i in range(task.clean.shape[1])]
            self.position_title = "position (token of the first clean prompt)"
            lengths = np.asarray(task.lengths)
            same = bool((lengths == lengths[0]).all())
            answer = np.asarray(task.answer)
            self.position = -1
            self.read = np.zeros(task.clean.shape[1], bool)
            self.read[-1] = True
            if same and answer.ndim == 1:
                labels = np.full(task.clean.shape, -1, np.int32)
                labels[:, -1] = answer
                self.prune_tokens, self.prune_labels = task.clean, jnp.asarray(labels)
                self.eval_tokens, self.eval_labels = task.clean, jnp.asarray(answer)
            else:  # the abstraction reads one position for every prompt
                self.prune_labels = self.eval_tokens = self.eval_labels = None
                self.prune_tokens = None
        if args.n_prompts < 2:
            parser.error(f"argument --n-prompts: need at least 2; got {args.n_prompts}")
        self.task = task
