"""Phase 4: evolve the whole stack (DEAP), or fine-tune a trained model's weights (CMA-ES).

    python evolve.py --config config.yaml --out runs/evo_search --parallel 8
    python evolve.py --out runs/evo_search --resume                      # after a crash or a kill
    python evolve.py --out runs/evo_search --scheduler tcp://host:8786   # trials on a Dask cluster
    python evolve.py --out runs/evo_search --export-optuna runs/evo_search/optuna.log   # then optuna-dashboard it
    python evolve.py --set evolutionary.mode=steady_state --out runs/again --replay-arrivals runs/evo_search
    python evolve.py --strategy cmaes --ckpt runs/joint/best.pt --out runs/cmaes

GA (default): genomes from evolutionary.search_space, decoded to full configs
(inconsistent ones repaired); each trial runs train_convlstm.py, fit_pgm.py
(and train_joint.py with evolutionary.trial_joint), then evaluate.py --split val
in one subprocess in <out>/trials/g<gen>/i<idx>/, and its fitness is the validation
objective(s). A genome never trains twice at the same fidelity. Tournament
selection with elitism (NSGA-II for two or more objectives), islands with ring
migration, low-fidelity first generations or successive halving inside each
generation (evolutionary.fidelity: halving: the best 1/eta of each rung
continue from their checkpoint), stagnation handling. evolutionary.mode:
steady_state breeds the next child as soon as a slot is free (no generations
to wait for; arrivals.csv records the order results came in, and
--replay-arrivals makes another search follow it exactly). --parallel N
trials run at once, one GPU (evolutionary.gpus_per_trial: that many, the
training phases under torchrun) or a share of the CPU cores each; a trial that
crashes, hangs past evolutionary.trial_timeout_s or yields NaN gets the worst
fitness and its reason in trials.csv. Writes state.json after every generation
(--resume continues it exactly), logbook.csv, trials.csv, hall_of_fame.json,
pareto.json (multi-objective), fitness.png and best/ (the winner's config,
ckpt.pt, pgm_params.pkl, metrics.json). --export-optuna PATH also writes the
trials as an Optuna study (a journal file, pip install -r requirements-optuna.txt)
for optuna-dashboard.

Retrain the winner on the whole archive on every GPU (README "Scaling out"):

    torchrun --nproc_per_node 8 train_convlstm.py --config runs/evo_search/best/config.yaml \
        --set training.epochs=60 --save runs/final
    python fit_pgm.py --config runs/evo_search/best/config.yaml --features runs/final/features.pt
    torchrun --nproc_per_node 8 train_joint.py --config runs/evo_search/best/config.yaml \
        --resume runs/final/ckpt.pt --save runs/final_joint

CMA-ES (--strategy cmaes): pycma over the flattened weights of
evolutionary.cmaes.groups of --ckpt, on evolutionary.cmaes.objective, every
generation's candidates scored in one batched forward. Writes the improved
checkpoint, cmaes.csv and a loss-per-generation plot into --out.
"""

from __future__ import annotations

import logging

from regimen.core import cli
from regimen.core.config_file import load_config

log = logging.getLogger("evolve")


def main(argv=None) -> None:
    parser = cli.make_parser(__doc__)
    parser.add_argument("--out", default="runs/evo_search", type=cli.path_arg, metavar="FOLDER",
                        help="output folder (default: runs/evo_search)")
    parser.add_argument("--strategy", default="ga", choices=("ga", "cmaes"), help="ga (default) or cmaes")
    parser.add_argument("--parallel", type=int, default=1, metavar="N", help="trials run at once (default: 1)")
    parser.add_argument("--resume", action="store_true", help="continue the search in --out from state.json")
    parser.add_argument("--overwrite", action="store_true", help="start again in an --out that holds a search")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="Dask scheduler address (default: evolutionary.scheduler; none: local slots)")
    parser.add_argument("--ckpt", type=cli.path_arg, metavar="PATH", help="cmaes: the checkpoint to fine-tune")
    parser.add_argument("--export-optuna", type=cli.path_arg, metavar="PATH",
                        help="at the end, write the trials into this new Optuna journal (optuna-dashboard PATH)")
    parser.add_argument("--replay-arrivals", type=cli.path_arg, metavar="PATH",
                        help="steady state: take results in the order of this search's arrivals.csv (or folder)")
    args = parser.parse_args(argv)
    cli.setup_logging()
    config = load_config(args.config, args.overrides)
    cli.apply_machine(config)
    if args.strategy == "cmaes":
        from regimen.search.cmaes import fine_tune

        if not args.ckpt:
            raise cli.UserError("--strategy cmaes needs --ckpt PATH (a checkpoint to fine-tune)")
        result = fine_tune(config, args.ckpt, args.out, args.overwrite)
        log.info("CMA-ES: %s %.6f -> %.6f over %d generations; wrote %s", result["objective"],
                 result["start_loss"], result["final_loss"], result["generations"], result["checkpoint"])
        return
    from regimen.search.evolution import evolve

    result = evolve(config, args.out, args.parallel, args.resume, args.overwrite, args.scheduler,
                    args.export_optuna, args.replay_arrivals)
    log.info("best: %s -> %s (%d trials, %d failed); best/ is %s", result["best"]["values"],
             result["best"]["objectives"], result["trials"], result["failures"], result["best_folder"])
    log.info(against_base(result))
    if "optuna_journal" in result:
        log.info("%d trials written to the Optuna journal %s; look at them with: optuna-dashboard %s",
                 result["optuna_trials"], result["optuna_journal"], result["optuna_journal"])


def against_base(result: dict) -> str:
    """How the winner compares with the base config (both at full fidelity), on the first objective."""
    name, base = result["objectives"][0], result["base"]
    if base["status"] != "ok":
        return f"the base config's own trial failed ({base['status']}); see trials.csv"
    best, own = result["best"]["objectives"][name], base["objectives"][0]
    if result["best"]["values"] == base["values"]:
        return f"no genome beat the base config ({name} {own:.4f}): best/ holds the base config"
    return f"the winner's {name} {best:.4f} against the base config's {own:.4f} ({best - own:+.4f})"


if __name__ == "__main__":
    cli.run(main)
