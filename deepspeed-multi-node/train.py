"""Fine-tune BLOOM on SQuAD with the HF Trainer; with DeepSpeed when a config is named.

    python train.py                                  # the workshop's settings (config.py)
    deepspeed --num_gpus 1 train.py --deepspeed ds_zero2.json

Top to bottom: arguments, model, data, Trainer, train, save, answers. Run again into the same
--output_dir, it resumes. bookkeeping.py keeps the rest: time, memory, run_metrics.json.
"""
import traceback

from bookkeeping import (STOPPED_TO_RESUME, Checkpoints, Record, job_started_at, leave,
                         load_deepspeed_ops, resume_point, run_settings, use_compile_caches,
                         write_settings)

record = Record(job_started_at())  # first: the job's clock, and a metrics file however it ends
use_compile_caches()  # what torch.compile and DeepSpeed compile is kept for the next job

from transformers import AutoConfig, DataCollatorForSeq2Seq, Trainer, default_data_collator, set_seed  # noqa: E402

from answer_quality import AnswerQualityBeforeTraining, answer_quality, write_answers  # noqa: E402
from config import COMPILED_LENGTH_MULTIPLE, deepspeed_config, parse_args  # noqa: E402
from data_loader import build_datasets  # noqa: E402
from model import load_model  # noqa: E402


def train():
    # 1. Arguments: the workshop's defaults, the fast path's, then the command line (config.py).
    args, training_args = parse_args()
    ds_config = deepspeed_config(training_args.deepspeed)
    record.args, record.training_args, record.ds_config = args, training_args, ds_config
    # A finished run, or a checkpoint that cannot be resumed, is refused before any work.
    settings = record.settings = run_settings(args, training_args, ds_config)
    resume_from = resume_point(training_args.output_dir,
                               AutoConfig.from_pretrained(args.model_name_or_path), settings)

    # 2. Model and tokenizer, built on the device they train on.
    set_seed(training_args.seed)  # the same random weights (random_weights) and order every run
    model, tokenizer = load_model(args.model_name_or_path, args.random_weights, training_args.device)
    if args.fast_path:
        from fast_path import enable_fast_path  # only when used: it brings the compiler
        enable_fast_path(model, compiled=args.compile_blocks)

    # 3. Data: `Question: ... Context: ... Answer: ...` texts, labels -100 on the padding.
    data = record.data = build_datasets(args, tokenizer)
    # Lengths rounded up to a multiple of 8 suit the GPU's matrix units; compiled blocks record
    # a CUDA graph per length, so there fewer lengths are better (config.py).
    record.length_multiple = COMPILED_LENGTH_MULTIPLE if args.compile_blocks else 8
    collator = (default_data_collator if args.pad_to_max_length else DataCollatorForSeq2Seq(
        tokenizer, label_pad_token_id=-100, pad_to_multiple_of=record.length_multiple))

    # 4. The Trainer, with the callbacks that time the run and write checkpoints.
    record.checkpoints = Checkpoints(training_args.output_dir, args.save_minutes, record.started)
    callbacks = [record.clock, record.checkpoints]
    if args.answer_quality:
        callbacks.append(AnswerQualityBeforeTraining(tokenizer, data.questions, args.max_length,
                                                     record.clock))
    trainer = Trainer(model=model, args=training_args, train_dataset=data.train,
                      eval_dataset=data.validation, processing_class=tokenizer,
                      data_collator=collator, callbacks=callbacks)
    record.trainer = trainer
    write_settings(trainer, settings)

    # 5. Train.
    if resume_from:
        print(f"resuming from {resume_from} (step {int(resume_from.rsplit('-', 1)[1])})")
    load_deepspeed_ops(ds_config, record.clock)
    trainer.train(resume_from_checkpoint=resume_from)
    if record.checkpoints.stopped_at is not None:  # the job requeues itself and resumes
        record.status = "stopped_on_request"
        return STOPPED_TO_RESUME

    # 6. Save the model: a folder that from_pretrained reloads.
    with record.clock.timing("final_save"):
        if args.save_model:
            trainer.save_model(training_args.output_dir)  # and the tokenizer; ZeRO-3 gathers first
        trainer.save_state()  # trainer_state.json: the log history of every step, for plots

    # 7. Did it learn to answer? (every rank: under ZeRO-3 they generate together)
    if args.answer_quality:
        with record.clock.timing("answer_generation"):
            record.answers_after, answers = answer_quality(
                trainer.model, tokenizer, data.questions, args.max_length, training_args.device)
        if trainer.is_world_process_zero():
            write_answers(training_args.output_dir, data.questions, answers)
    record.status = "complete"
    return 0


def main():
    try:
        code = train()
        record.write()
    except (ValueError, OSError) as e:  # bad input: one line, before any training step
        code = record.fail(e)
    except SystemExit as e:  # SIGTERM (scancel, time limit) or SIGINT; argparse's own exits pass
        if not isinstance(e.code, int) or e.code < 128:
            raise
        code = record.fail(e)
    except Exception as e:  # a fault while training: its traceback, then its reason last
        traceback.print_exc()
        code = record.fail(e)
    leave(code)


if __name__ == "__main__":
    main()
