"""rank.png, the ranking study drawn: the supernet's order against training each subnet alone, and the
standalone EPEs against cost with the search's choice."""


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
    """Standalone EPE against GMACs: the study's subnets (a second seed joined to its first), and the
    search's choice (both seeds) with the cost window of the random pick it is compared with shaded."""
    rows, choice = report["archs"], report.get("search_choice")
    ax.scatter([r["gmacs"] for r in rows], [r["standalone_epe"] for r in rows], c="tab:blue", label="study subnets")
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
