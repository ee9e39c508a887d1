"""`l`: the blind arena's leaderboard of this session's versions, updated as votes come in."""

from __future__ import annotations

from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label, Sparkline

from tui_align.arena import elo, leaderboard, strengths


def live_rating_history(votes: list[tuple[int, int, float]]) -> list[float]:
    """After each vote, the rating of the newer version in it (the one live then), on the votes so far."""
    return [elo(strengths(votes[:k + 1], iterations=200, tolerance=1e-6).get(max(a, b), 1.0))
            for k, (a, b, _) in enumerate(votes)]


class LeaderboardScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,l,q", "dismiss", "close")]

    def __init__(self, store) -> None:
        super().__init__()
        self.store = store

    def compose(self):
        with Vertical(id="leaderboard-box") as box:
            box.border_title = "arena: versions rated from blind votes (Bradley-Terry, v0 = 1000)"
            yield Label("", id="leaderboard-summary")
            yield DataTable(id="leaderboard-table", cursor_type="row", zebra_stripes=True)
            yield Label("the live version's rating, vote by vote", classes="metric-label")
            yield Sparkline([], id="leaderboard-spark")

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns("version", "rating", "95% interval", "votes", "win rate vs v0")
        self.show()
        # Refit (with its bootstrap) only when a vote came in, not on every change of the loop's state.
        self.watch(self.app, "loop_state", lambda old, new: old.votes != new.votes and self.show(), init=False)

    def show(self) -> None:
        votes, live = self.store.arena_votes(), self.store.active_version()
        table = self.query_one(DataTable)
        table.clear()
        for r in leaderboard(votes, samples=100):
            rate = f"{r.win_rate_vs_v0:.0%}" if r.win_rate_vs_v0 is not None else "-"
            table.add_row(f"{'* ' if r.version == live else ''}v{r.version}", f"{r.rating:.0f}",
                          f"{r.low:.0f}-{r.high:.0f}", str(r.votes), rate)
        self.query_one("#leaderboard-summary", Label).update(
            f"{len(votes)} votes · every few prompts one round is a blind arena round (the live version against "
            "an earlier one); * is live" if votes else "no arena votes yet: every few prompts one round pits the "
            "live version against an earlier one, blind")
        self.query_one(Sparkline).data = live_rating_history(votes)
