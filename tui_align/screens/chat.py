"""The main screen: conversation, candidates, prompt; a view of the LiveLoop's rounds.

A round: Enter sends the prompt (stored), the input is disabled while the candidates stream,
then focus moves to the candidates and the feedback keys are live; the loop commits the
judgment, then the screen shows it, and the chosen reply joins the conversation.
The prompt line always says what the next key judges, and when the round is complete.
"""

from __future__ import annotations

from pathlib import Path

from textual import work
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.screen import Screen

from tui_align.client import EngineDied, EngineError
from tui_align.errors import WriteFailed
from tui_align.loop import LiveLoop, LoopState
from tui_align.rounds import SCORED_METHODS, SLOT_LETTERS, Phase, Round
from tui_align.screens.editor import EditorScreen
from tui_align.screens.help import HelpScreen
from tui_align.screens.leaderboard import LeaderboardScreen
from tui_align.widgets.candidates import MARK_METHODS, CandidatePane
from tui_align.widgets.conversation import ConversationPane
from tui_align.widgets.footer import KeyFooter
from tui_align.widgets.metrics import MetricsPanel
from tui_align.widgets.prompt import PLACEHOLDERS, PromptInput, hint
from tui_align.widgets.status_bar import StatusBar

# Single-letter screen keys: inert (and hidden) while the prompt box has focus, where they are text.
LETTER_ACTIONS = {"train_now", "new_conversation", "toggle_metrics", "leaderboard", "help", "quit", "focus_prompt"}
DEFAULT_MODEL = "SmolLM2-135M-Instruct"


def score_label(value: int, scale: str) -> str:
    """How a stored score shows in a candidate's title: 4/5, or a thumb (KTO's desirable / undesirable)."""
    return f"{value}/5" if scale == "1-5" else ("👍" if value else "👎")


class ChatScreen(Screen):
    BINDINGS = [
        Binding("question_mark", "help", "help", key_display="?"),
        Binding("q", "quit", "quit"),
        Binding("u", "train_now", "train"),
        Binding("ctrl+z", "app.rollback", "undo update"),
        Binding("ctrl+t", "take_back", "take back", priority=True),
        Binding("n", "new_conversation", "new"),
        Binding("m", "toggle_metrics", "metrics"),
        Binding("l", "leaderboard", "arena"),
        Binding("i", "focus_prompt", "type", show=False),
        Binding("escape", "escape", "leave box / stop", show=False),
    ]

    phase: reactive[Phase] = reactive(Phase.LOADING, init=False)

    def __init__(self, loop: LiveLoop) -> None:
        super().__init__()
        self.loop = loop
        self.store, self.config = loop.store, loop.config
        self.round: Round | None = None
        self.interrupted: Round | None = None  # a round the engine died in: regenerated after the restart
        self.metrics_shown_at: float | None = None  # the loop's last update the metrics panel has shown
        self.conversation_id = self.store.latest_conversation()
        if self.conversation_id is None:  # if this fails the app cannot go on: it ends with the one line
            with self.store.storing("the first conversation"):
                self.conversation_id = self.store.new_conversation(self.config.system)

    def compose(self):
        self.status_bar = StatusBar(id="status")
        yield self.status_bar
        with Horizontal(id="body"):
            with Vertical(id="main"):
                yield ConversationPane(id="conversation")
                yield CandidatePane(self.config.candidates, self.config.method, id="candidates", classes="no-round")
                yield PromptInput(id="prompt", placeholder=PLACEHOLDERS[Phase.LOADING])
            yield MetricsPanel(self.config.method, id="metrics")
        yield KeyFooter(compact=True)

    def on_mount(self) -> None:
        history = [m for m in self.store.history(self.conversation_id) if m["role"] != "system"]
        banner = (f"session {self.store.name} · resumed at v{self.loop.state.version} · {len(history) // 2} earlier turns"
                  if history else f"session {self.store.name} · {self.config.method} · new conversation")
        self.conversation.show(history, banner)
        self.status_bar.model = Path(self.loop.client.model).name if self.loop.client.model else DEFAULT_MODEL
        self.watch(self.app, "loop_state", self.loop_changed)  # init: the engine may be ready already
        self.prompt.focus()
        self.refresh_metrics()

    # Widgets ---------------------------------------------------------------------------------

    @property
    def conversation(self) -> ConversationPane:
        return self.query_one(ConversationPane)

    @property
    def candidates(self) -> CandidatePane:
        return self.query_one(CandidatePane)

    @property
    def prompt(self) -> PromptInput:
        return self.query_one(PromptInput)

    def watch_phase(self, phase: Phase) -> None:
        self.candidates.judging = phase is Phase.JUDGING
        if phase is Phase.GENERATING and self.focused is self.prompt:
            # Nothing focused while the candidates stream: a disabled prompt would hand focus to the
            # conversation, whose focus style repaints every turn, twice a round.
            self.set_focus(None)
        self.prompt.disabled = phase in (Phase.GENERATING, Phase.JUDGING)
        # On the pane, not the screen: a class on the screen restyles every widget in the conversation.
        self.candidates.set_class(phase not in (Phase.GENERATING, Phase.JUDGING), "no-round")
        if phase is Phase.JUDGING:
            self.candidates.focus_first()
        elif phase in (Phase.PROMPT, Phase.LOADING):
            self.prompt.focus()
        self.show_hint()
        self.refresh_bindings()

    def show_hint(self) -> None:
        """The prompt line says what the next key does: which candidate it judges, or that the round is done."""
        slot = self.candidates.focused_slot() if self.phase is Phase.JUDGING else 0
        engine_down = self.loop.state.note if self.loop.state.engine == "error" else None
        self.prompt.placeholder = hint(self.phase, self.round, self.config.method, slot, engine_down)

    def on_candidate_pane_focused(self, message: CandidatePane.Focused) -> None:
        self.show_hint()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in LETTER_ACTIONS and isinstance(self.focused, PromptInput):
            return False
        return True

    # The loop's state, as the app hands it down ------------------------------------------------

    def loop_changed(self, state: LoopState) -> None:
        self.status_bar.state = state
        if state.engine == "ready" and self.phase is Phase.LOADING:
            self.resume()
        elif state.engine != "ready" and self.phase is Phase.PROMPT:
            self.phase = Phase.LOADING
        elif self.phase is Phase.LOADING:
            self.show_hint()
        if state.last_update != self.metrics_shown_at:  # a new update, not every change of the loop's state
            self.metrics_shown_at = state.last_update
            self.refresh_metrics()

    # A round --------------------------------------------------------------------------------

    def on_prompt_input_submitted(self, message: PromptInput.Submitted) -> None:
        if self.phase is not Phase.PROMPT:
            self.notify("wait for the engine" if self.phase is Phase.LOADING else "judge the candidates first")
            return
        try:
            round_ = self.loop.begin(self.conversation_id, message.text)
        except WriteFailed as exc:  # the text stays in the box: Enter again once there is room
            self.not_stored(exc)
            return
        self.prompt.clear()
        self.conversation.add_turn("user", message.text)
        self.begin_round(round_)

    def resume(self) -> None:
        """The engine is ready: back to the prompt, or, if it died mid-round, the stored prompt asked again."""
        self.phase = Phase.PROMPT
        if self.interrupted is not None:
            interrupted, self.interrupted = self.interrupted, None
            self.begin_round(self.loop.round_for(interrupted.turn_id))

    def begin_round(self, round_: Round) -> None:
        self.round = round_
        self.candidates.reset(round_.n)
        self.phase = Phase.GENERATING
        self.generate(round_)

    @work(group="generate", exclusive=True)
    async def generate(self, round_: Round) -> None:
        views = self.candidates.views
        try:
            await self.loop.generate(round_, on_token=lambda slot, text: views[slot].append(text))
        except EngineDied:
            self.interrupted, self.round = round_, None  # kept for the restart
            self.phase = Phase.LOADING
            if self.loop.ready:  # the news came after a restart had finished
                self.resume()
            return
        except (EngineError, WriteFailed) as exc:
            if isinstance(exc, WriteFailed):
                self.not_stored(exc)
            else:
                self.notify(f"generation failed: {exc}", severity="error", timeout=10)
            self.round = None
            self.phase = Phase.PROMPT
            return
        for slot in range(round_.n):
            views[slot].finish(round_.text_at(slot), round_.results[round_.shown_order[slot]])
        self.phase = Phase.JUDGING

    # Feedback ---------------------------------------------------------------------------------

    def on_candidate_pane_feedback(self, message: CandidatePane.Feedback) -> None:
        self.feedback(message.kind, message.slot, message.value)

    def not_stored(self, exc: WriteFailed) -> None:
        """A write failed: one line says what was not stored and why; the screen shows nothing of it."""
        self.notify(f"{exc}\nNothing of it was stored: free some disk space and try again.", title="not stored",
                    severity="error", timeout=20)

    def feedback(self, kind: str, slot: int = 0, value: int | None = None) -> None:
        """Hand the judgment to the loop (which commits it), then show it; only while judging. A judgment
        that could not be stored is not shown: the round stays open for another try."""
        try:
            self._feedback(kind, slot, value)
        except WriteFailed as exc:
            self.not_stored(exc)

    def _feedback(self, kind: str, slot: int, value: int | None) -> None:
        r = self.round
        if self.phase is not Phase.JUDGING or r is None:
            self.notify("nothing to judge yet")
            return
        letter = SLOT_LETTERS[slot].upper()
        if kind == "pick":
            self.loop.pick(r, slot)
            self.complete(slot, f"{letter} preferred over {r.n - 1} · stored")
        elif ((kind == "digit" and self.config.method in SCORED_METHODS)
              or (kind == "thumb" and self.config.method in MARK_METHODS)):
            scale = "1-5" if kind == "digit" else "thumbs"
            if scale == "1-5" and not 1 <= value <= 5:
                return
            complete = self.loop.rate(r, slot, value, scale)
            self.candidates.views[slot].mark(f"{score_label(value, scale)} stored", "rated")
            if complete:
                self.complete(r.best_scored(), "rated · stored")
            else:
                self.candidates.views[r.next_unscored()].focus()
                self.show_hint()
        elif kind == "digit" and 1 <= value <= r.n:
            if self.loop.rank(r, value - 1):
                self.complete(r.ranking[0], f"ranked {' > '.join(SLOT_LETTERS[s].upper() for s in r.ranking)} · stored")
            else:
                self.candidates.views[value - 1].mark(f"#{len(r.ranking)}")
                self.show_hint()
        elif kind in ("tie", "both_bad", "skip"):
            self.loop.outcome(r, kind)
            if kind == "tie":
                self.complete(0, "tie · stored")
            else:
                self.complete(None, f"{kind.replace('_', ' ')} · stored; ask again")
        elif kind == "edit":
            self.app.push_screen(EditorScreen(r.text_at(slot), f"edit {letter}: ctrl+s stores it"),
                                 lambda text: self.edited(r, slot, text))
        elif kind == "regenerate":
            self.begin_round(self.loop.round_for(r.turn_id))

    def edited(self, round_: Round, slot: int, text: str | None) -> None:
        if text is None or self.round is not round_:
            return
        try:
            self.loop.edit(round_, slot, text)
        except WriteFailed as exc:
            self.not_stored(exc)
            return
        self.complete(None, f"{SLOT_LETTERS[slot].upper()} edited · stored", text=text)

    def complete(self, slot: int | None, note: str, text: str | None = None) -> None:
        """The judgment is stored: the reply continues the conversation and the prompt is live again."""
        r = self.round
        if slot is not None:
            self.candidates.views[slot].mark("✓", "chosen")
            text = r.text_at(slot)
        if text is not None:
            self.conversation.add_turn("assistant", text, note)
        else:
            self.conversation.add_turn("system", f"*{note}*")
        self.round = None
        self.phase = Phase.PROMPT if self.loop.ready else Phase.LOADING
        self.refresh_metrics()

    def action_take_back(self) -> None:
        """ctrl+t: withdraw the last judgment; its round can be judged again."""
        if self.phase is Phase.GENERATING:
            self.notify("wait for the candidates (Esc stops them)")
            return
        try:
            judgment = self.loop.take_back()
        except WriteFailed as exc:
            self.not_stored(exc)
            return
        if judgment is None:
            self.notify("no judgment of this run to take back")
            return
        r = judgment.round
        if r is not self.round:  # a finished round: open it again, and drop what it added to the conversation
            self.conversation.remove_last_turn()
            self.round = r
            for slot, view in enumerate(self.candidates.views):
                view.reset()  # the verdict marks go too
                view.finish(r.text_at(slot), r.results[r.shown_order[slot]])
                if slot in r.scores:  # a thumb is kept as 5 or 1 (Round.scores)
                    score = r.scores[slot]
                    view.mark(f"{score_label(score > 3, 'thumbs') if self.config.method == 'kto' else f'{score}/5'}"
                              " stored", "rated")
            self.phase = Phase.JUDGING
        elif judgment.slot is not None:
            view = self.candidates.views[judgment.slot]
            view.reset()
            view.finish(r.text_at(judgment.slot), r.results[r.shown_order[judgment.slot]])
            view.focus()
        self.show_hint()
        self.notify("taken back: it is never trained on from now", timeout=4)

    # Screen actions -------------------------------------------------------------------------------

    def action_new_conversation(self) -> None:
        if self.phase is Phase.GENERATING:
            self.notify("wait for the candidates (Esc stops them)")
            return
        try:
            with self.store.storing("the new conversation"):
                self.conversation_id = self.store.new_conversation(self.config.system)
        except WriteFailed as exc:
            self.not_stored(exc)
            return
        self.round = None
        self.candidates.reset()
        self.conversation.show([], f"session {self.store.name} · new conversation")
        self.phase = Phase.PROMPT if self.loop.ready else Phase.LOADING

    def action_toggle_metrics(self) -> None:
        panel = self.query_one(MetricsPanel)
        panel.toggle_class("shown")
        self.refresh_metrics()

    def refresh_metrics(self) -> None:
        panel = self.query_one(MetricsPanel)
        if panel.has_class("shown"):
            panel.show_metrics(self.store.metrics_history(), self.store.counts())

    def action_train_now(self) -> None:
        self.app.action_train_now()

    async def action_quit(self) -> None:
        await self.app.action_quit()

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen())

    def action_leaderboard(self) -> None:
        self.app.push_screen(LeaderboardScreen(self.store))

    def action_focus_prompt(self) -> None:
        if not self.prompt.disabled:
            self.prompt.focus()

    async def action_escape(self) -> None:
        if self.phase is Phase.GENERATING:
            await self.loop.client.cancel()  # the engine stops within a token; `done` follows
        elif isinstance(self.focused, PromptInput):
            self.conversation.focus()
        else:
            self.action_focus_prompt()

    def commands(self):
        """(title, help, callback) for the command palette: every round action by name."""
        slot = self.candidates.focused_slot
        for i in range(self.config.candidates):
            letter = SLOT_LETTERS[i].upper()
            yield f"Pick {letter}", f"{letter} is better ({SLOT_LETTERS[i]})", lambda i=i: self.feedback("pick", i, i)
        if self.config.method in MARK_METHODS:
            yield "Desirable", "Mark the focused candidate good (+)", lambda: self.feedback("thumb", slot(), 1)
            yield "Undesirable", "Mark the focused candidate bad (-)", lambda: self.feedback("thumb", slot(), 0)
        yield "Tie", "Both are as good (t)", lambda: self.feedback("tie")
        yield "Both bad", "Neither is acceptable (x)", lambda: self.feedback("both_bad")
        yield "Skip round", "No feedback; stored as skipped (s)", lambda: self.feedback("skip")
        yield "Edit reply", "Correct the focused candidate (e)", lambda: self.feedback("edit", slot())
        yield "Regenerate", "New candidates for the same prompt (r)", lambda: self.feedback("regenerate")
        yield "Take back", "Withdraw the last judgment (ctrl+t)", self.action_take_back
        yield "New conversation", "Start over (n)", self.action_new_conversation
        yield "Toggle metrics", "Sparklines of the updates (m)", self.action_toggle_metrics
        yield "Arena leaderboard", "Versions rated from blind votes (l)", self.action_leaderboard
        yield "Help", "Every key (?)", self.action_help
