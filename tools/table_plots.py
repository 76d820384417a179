"""tools/tables.py's plots: loss.png, gpu-memory.png and time.png, readable at 30 runs and more
(a panel per stage, a colour per configuration, direct labels)."""
import textwrap

from workshop.metrics import TIME_PARTS


def configuration(run):
    """A run's label without its job: runs of one configuration share a colour."""
    return run.label.rsplit(" (", 1)[0] if run.metrics else run.label


def colours(runs):
    """A distinct colour per configuration: tab10, then tab20's dark shades before its light
    ones, then evenly spaced hues."""
    import matplotlib
    keys = list(dict.fromkeys(configuration(r) for r in runs))
    n = len(keys)
    if n <= 10:
        palette = matplotlib.colormaps["tab10"].colors[:n]
    elif n <= 20:
        tab20 = matplotlib.colormaps["tab20"].colors
        palette = (tab20[0::2] + tab20[1::2])[:n]
    else:
        palette = [matplotlib.colormaps["hsv"](i / n) for i in range(n)]
    by_key = dict(zip(keys, palette))
    return {r.label: by_key[configuration(r)] for r in runs}


def by_stage(runs, most=8):
    """(title, runs) panels: the runs of each stage, at most `most` to a panel."""
    stages = {}
    for r in runs:
        stages.setdefault(r.stage or "other", []).append(r)
    return [(f"{stage}" + (f" ({i // most + 1} of {-(-len(rs) // most)})" if len(rs) > most else ""), rs[i:i + most])
            for stage, rs in stages.items() for i in range(0, len(rs), most)]


def same_curves(runs, curve, within=1e-3):
    """Groups of runs whose curves lie on each other (the same steps, values within `within`
    of each other, relative): one label says all of them."""
    groups = []
    for r in runs:
        points = curve(r)
        group = next((g for g in groups if len(curve(g[0])) == len(points) and all(
            x == y and abs(a - b) <= within * max(abs(a), abs(b), 1e-12)
            for (x, a), (y, b) in zip(curve(g[0]), points))), None)
        if group:
            group.append(r)
        else:
            groups.append([r])
    return groups


def together(runs):
    """One label for runs whose curves lie on each other: their configuration and jobs."""
    if len(runs) == 1:
        return runs[0].label
    if len({configuration(r) for r in runs}) == 1 and all(r.metrics for r in runs):
        jobs = ", ".join(r.label.rsplit(" (", 1)[1].rstrip(")") for r in runs)
        return f"{configuration(runs[0])} ({jobs}: identical curves)"
    return f"{runs[0].label} and {len(runs) - 1} more: identical curves"


def label_ends(ax, ends):
    """Direct labels right of the panel, each beside its curve's last value, spread apart (a
    long label wraps onto more lines)."""
    low, high = ax.get_ylim()
    line, top = (high - low) * 0.085, None  # a 7-point line of a 3-inch panel
    for y, text, colour in sorted(ends, key=lambda e: e[0]):
        text = textwrap.fill(text, 62, subsequent_indent="  ")
        lines = text.count("\n") + 1
        at = y if top is None else max(y, top + line * (lines + 1) / 2)
        top = at + line * (lines - 1) / 2
        ax.annotate(text, xy=(1, y), xycoords=("axes fraction", "data"), xytext=(1.03, at),
                    textcoords=("axes fraction", "data"), color=colour, fontsize=7, va="center",
                    arrowprops=dict(arrowstyle="-", color=colour, lw=0.5), annotation_clip=False)


def panels(plt, count, title):
    """A figure of `count` panels one above the other, room on the right for their labels."""
    fig, axes = plt.subplots(count, 1, figsize=(13, 3.1 * count + 0.9), squeeze=False)
    fig.suptitle(title, y=1 - 0.15 / (3.1 * count + 0.9))
    fig.subplots_adjust(left=0.07, right=0.6, hspace=0.5, top=1 - 0.75 / (3.1 * count + 0.9),
                        bottom=0.5 / (3.1 * count + 0.9))
    return fig, list(axes.flat)


def plot(runs, folder):
    """loss.png, gpu-memory.png and time.png in folder; returns the files written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    folder.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name):
        fig.savefig(folder / name, dpi=100)
        plt.close(fig)
        written.append(folder / name)

    def losses(r):
        return r.losses + [(e["step"], e["eval_loss"]) for e in r.epochs if e.get("step")]

    if curves := [r for r in runs if losses(r)]:
        groups = by_stage(curves)
        fig, axes = panels(plt, len(groups), "Train loss (lines, each step) and eval loss (dots); runs "
                                             "whose curves lie on each other (within 0.1%) share a label")
        for ax, (title, group) in zip(axes, groups):
            ends, colour = [], colours(group)
            for same in same_curves(group, losses):
                r = same[0]
                if r.losses:
                    ax.plot(*zip(*r.losses), "-", color=colour[r.label], alpha=0.8, lw=1)
                if evals := [(e["step"], e["eval_loss"]) for e in r.epochs if e.get("step")]:
                    ax.plot(*zip(*evals), "o", color=colour[r.label], markersize=5)
                ends.append((losses(r)[-1][1], together(same), colour[r.label]))
            ax.set(title=title, xlabel="optimizer step", ylabel="loss")
            ax.grid(alpha=0.3)
            label_ends(ax, ends)
        save(fig, "loss.png")
    if gpu_runs := [r for r in runs if r.gpu is not None]:
        groups = by_stage(gpu_runs)
        fig, axes = panels(plt, len(groups), "GPU memory.used (nvidia-smi); a run's GPUs: solid, "
                                             "dashed, dotted, dash-dot")
        for ax, (title, group) in zip(axes, groups):
            ends, colour = [], colours(group)
            for r in group:
                minutes = (r.gpu["time"] - r.gpu["time"].min()).dt.total_seconds() / 60
                gpus = list(r.gpu.assign(minutes=minutes).groupby(["node", "index"]))
                for i, (_, rows) in enumerate(gpus):
                    ax.plot(rows["minutes"], rows["memory.used"], ["-", "--", ":", "-."][i % 4],
                            color=colour[r.label], lw=1)
                ends.append((r.gpu["memory.used"].max(), r.label + (f" ({len(gpus)} GPUs)" if len(gpus) > 1 else ""),
                             colour[r.label]))
            ax.set(title=title, xlabel="minutes since the log started", ylabel="MiB")
            ax.grid(alpha=0.3)
            label_ends(ax, ends)
        save(fig, "gpu-memory.png")
    if timed := [r for _, stage in by_stage(runs, len(runs)) for r in stage if r.m.get("time_seconds")]:
        fig, ax = plt.subplots(figsize=(14, 0.32 * len(timed) + 1.6))
        left = [0.0] * len(timed)
        for i, part in enumerate(TIME_PARTS):  # a colour of its own for each part
            seconds = [r.m["time_seconds"].get(part) or 0 for r in timed]
            ax.barh(range(len(timed)), seconds, left=left, color=matplotlib.colormaps["tab10"](i),
                    label=part.replace("_", " "))
            left = [a + b for a, b in zip(left, seconds)]
        ax.set_yticks(range(len(timed)), [f"{r.stage}: {r.label}" for r in timed], fontsize=7)
        ax.invert_yaxis()
        ax.set(xlabel="seconds since the job started", title="Where the time went (grouped by stage)")
        ax.grid(alpha=0.3, axis="x")
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
        fig.tight_layout()
        save(fig, "time.png")
    return written
