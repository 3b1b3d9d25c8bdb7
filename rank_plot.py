"""rank.png, the ranking study drawn: the supernet's order against training each subnet alone, and the
standalone EPEs against cost with the search's choice; methods.png, the bench's methods table drawn."""


def plot_ranking(report, path):
    """rank.png: supernet EPE against standalone EPE, one labelled point per arch; the same archs by
    rank with the identity line (perfect agreement) drawn; and the standalone EPEs against cost."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = report["archs"]
    fig, (ax_epe, ax_rank, ax_cost) = plt.subplots(1, 3, figsize=(18, 5.5))
    plot_cost_panel(ax_cost, report)
    for ax, (xkey, ykey, what) in zip((ax_epe, ax_rank), (("standalone_epe", "supernet_epe", "EPE"),
                                                          ("standalone_rank", "supernet_rank", "rank"))):
        ax.scatter([r[xkey] for r in rows], [r[ykey] for r in rows], c=[r["gmacs"] for r in rows], cmap="viridis")
        for r in rows:
            ax.annotate(r["arch"].replace(",", ""), (r[xkey], r[ykey]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        ax.set_xlabel(f"standalone {what}")
        ax.set_ylabel(f"supernet {what}")
    ax_rank.plot([1, len(rows)], [1, len(rows)], "k--", lw=0.8, label="identity of ranks")
    ax_rank.legend(loc="upper left")
    boot = report["bootstrap"]
    fig.suptitle(f"Kendall tau-b {report['kendall_tau_b']:.3f} "
                 f"[{boot['tau_ci95'][0]:.2f}, {boot['tau_ci95'][1]:.2f}], "
                 f"Spearman rho {report['spearman_rho']:.3f}, {len(rows)} subnets (colour: GMACs)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_cost_panel(ax, report):
    """Standalone EPE against GMACs: the subnets trained alone (a second seed joined to its first), and the
    search's choice (both seeds) with the cost window of the random pick it is compared with shaded."""
    rows, choice = report["archs"], report.get("search_choice")
    ax.scatter([r["gmacs"] for r in rows], [r["standalone_epe"] for r in rows], c="tab:blue",
               label="subnets trained alone")
    by_code = {r["arch"]: r for r in rows}
    for run in report.get("second_seed_runs", []):
        if run["arch"] in by_code and not (choice and run["arch"] == choice["arch"]):  # the choice is starred
            row = by_code[run["arch"]]
            ax.plot([row["gmacs"]] * 2, [row["standalone_epe"], run["standalone_epe"]], "-", c="tab:blue", lw=0.8)
            ax.plot(row["gmacs"], run["standalone_epe"], "o", mfc="none", c="tab:blue")
    if choice:
        ax.plot([choice["gmacs"]] * len(choice["choice_seed_epes"]), choice["choice_seed_epes"], "*", c="tab:red",
                ms=12, label=f"search's choice {choice['arch'].replace(',', '')} (seeds)")
        costs = [r["gmacs"] for r in choice["similar"]] + [choice["gmacs"]]
        ax.axvspan(min(costs), max(costs), color="tab:red", alpha=0.1, label="random pick's cost window")
        ax.axhline(choice["random_pick_epe"], c="tab:red", ls=":", lw=0.8, label="random pick's mean EPE")
    ax.set_xlabel("GMACs")
    ax.set_ylabel("standalone EPE (open: second seed)")
    ax.legend(loc="upper right", fontsize=8)


def plot_methods(methods, path):
    """methods.png, the bench's methods table drawn: each method's mean regret over the cost bands
    (the point) and its worst band (the cap) against the subnet training steps it adds per pick; and
    tau-b with its 95% interval for the methods that order every arch."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_regret, ax_tau) = plt.subplots(1, 2, figsize=(15, 5.5))
    shown = [m for m in methods if m["regret_mean"] is not None]
    for i, m in enumerate(shown):
        x = max(m["steps_per_pick"], 1.0)  # the supernet adds nothing per pick: drawn at 1 on the log axis
        ax_regret.errorbar([x], [m["regret_mean"]], yerr=[[0], [m["regret_max"] - m["regret_mean"]]], fmt="o",
                           capsize=4, c=f"C{i % 10}", label=f"{m['method']}: best in {m['pick_is_best']}/{m['bands']}")
    ax_regret.set_xscale("log")
    ax_regret.set_xlabel("subnet training steps added per pick (the supernet alone at 1)")
    ax_regret.set_ylabel("regret: pick's standalone EPE - band's best (mean, cap: worst band)")
    ax_regret.grid(alpha=0.3)
    if shown:
        ax_regret.legend(fontsize=7)
    else:
        ax_regret.text(0.5, 0.5, "no cost band holds two rows", ha="center", transform=ax_regret.transAxes)
    ordered = [m for m in methods if m["kendall_tau_b"] is not None]
    y = list(range(len(ordered)))
    ax_tau.errorbar([m["kendall_tau_b"] for m in ordered], y, fmt="o", capsize=4,  # a percentile interval may
                    xerr=[[max(m["kendall_tau_b"] - m["tau_ci95"][0], 0) for m in ordered],  # miss the point
                          [max(m["tau_ci95"][1] - m["kendall_tau_b"], 0) for m in ordered]])
    ax_tau.set_yticks(list(y), [m["method"] for m in ordered], fontsize=8)
    ax_tau.axvline(0, c="k", lw=0.8)
    ax_tau.set_xlim(-1, 1)
    ax_tau.set_xlabel("Kendall tau-b against the rows, 95% bootstrap interval")
    ax_tau.grid(alpha=0.3)
    fig.suptitle(f"methods against the ranking benchmark's rows ({shown[0]['bands'] if shown else 0} cost bands)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
