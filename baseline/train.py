"""Fine-tune BLOOM (or your own causal LM: --model_name_or_path) on SQuAD with the HF Trainer;
with DeepSpeed when a config is named.

    python train.py                                  # the settings of config.py
    deepspeed --num_gpus 1 train.py --deepspeed ds_zero2.json

Top to bottom: arguments, model, data, Trainer, train, save, answers. Run again into the same
--output_dir, it resumes. The run's bookkeeping (its time, checkpoints, run_metrics.json and
exit status) comes from the workshop package (workshop/run.py), around the lesson.
"""
from transformers import DataCollatorForSeq2Seq, Trainer, default_data_collator, set_seed

from config import Settings
from data_loader import IGNORE_INDEX, build_datasets
from model import load_model
from workshop.answers import answer_quality
from workshop.arguments import parse_args
from workshop.run import Run, leave


def main():
    with Run() as run:  # however the run ends: run_metrics.json, and the exit status the job reads
        # 1. Arguments: config.py's settings under the command line; with DeepSpeed the processes meet here.
        args, training_args, deepspeed = parse_args(Settings, clock=run.clock)
        resume_from = run.begin(args, training_args, deepspeed)  # refuses what cannot resume

        # 2. Model and tokenizer, built on the device they train on.
        set_seed(training_args.seed)  # the same random weights (random_weights) and order every run
        model, tokenizer = load_model(args.model_name_or_path, args.random_weights, training_args.device)
        if args.fast_path:
            from workshop.fast_path import enable_fast_path  # only when used: it brings the compiler
            enable_fast_path(model, compiled=args.compile_blocks)

        # 3. Data: `Question: ... Context: ... Answer: ...` texts, labels -100 on the padding.
        data = build_datasets(args, tokenizer, training_args)
        collator = (default_data_collator if args.pad_to_max_length else DataCollatorForSeq2Seq(
            tokenizer, label_pad_token_id=IGNORE_INDEX, pad_to_multiple_of=args.length_multiple))

        # 4. The Trainer, with the callbacks that time the run and write its checkpoints.
        trainer = Trainer(model=model, args=training_args, train_dataset=data.train,
                          eval_dataset=data.validation, processing_class=tokenizer,
                          data_collator=collator, callbacks=run.callbacks(tokenizer, data))

        # 5. Train. Stopped on request (the time limit's warning), it has saved a checkpoint and
        # ends here: the job requeues it, to resume from that checkpoint.
        trainer.train(resume_from_checkpoint=resume_from)
        if not run.stopped_to_resume:
            # 6. Save the model: a folder that from_pretrained reloads.
            with run.timing("final_save"):
                if args.save_model:
                    trainer.save_model(training_args.output_dir)  # and the tokenizer; ZeRO-3 gathers first
                trainer.save_state()  # trainer_state.json: the log history of every step, for plots

            # 7. Did it learn to answer? (every rank: under ZeRO-3 they generate together)
            if args.answer_quality:
                with run.timing("answer_generation"):
                    scores, answers = answer_quality(trainer.model, tokenizer, data.questions,
                                                     args.max_length, training_args.device)
                run.record_answers(data.questions, answers, scores)
    return run.exit_status


if __name__ == "__main__":
    leave(main())  # with several ranks, together, after the others have finished
