"""The main screen: conversation, candidates, prompt; it runs the rounds.

A round: Enter sends the prompt (stored), the input is disabled while the candidates stream,
then focus moves to the candidates and the feedback keys are live; the judgment is committed
to the store, then shown, and the chosen reply joins the conversation.
"""

from __future__ import annotations

import random
from pathlib import Path

from textual import work
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer

from tui_align.client import EngineDied, EngineError
from tui_align.rounds import SLOT_LETTERS, Phase, Round
from tui_align.screens.editor import EditorScreen
from tui_align.screens.help import HelpScreen
from tui_align.widgets.candidates import CandidatePane
from tui_align.widgets.conversation import ConversationPane
from tui_align.widgets.metrics import MetricsPanel
from tui_align.widgets.prompt import PromptInput
from tui_align.widgets.status_bar import StatusBar

# Single-letter screen keys: inert (and hidden) while the prompt box has focus, where they are text.
LETTER_ACTIONS = {"train_now", "new_conversation", "toggle_metrics", "help", "quit", "focus_prompt"}
PLACEHOLDERS = {
    Phase.LOADING: "The model is loading… you can type already",
    Phase.PROMPT: "Type a prompt; Enter sends, ctrl+j adds a line, Esc for the other keys",
    Phase.GENERATING: "Candidates are streaming… Esc stops them",
    Phase.JUDGING: "Judge the candidates: a/b pick · t tie · x both bad · s skip · e edit · r regenerate",
}

ENGINE_DOWN = "The engine stopped: ctrl+r restarts it at the last saved version"
PPO_JUDGING = "Score each candidate: 1-5 or +/- (←/→ moves) · a/b pick · e edit · r regenerate"


class ChatScreen(Screen):
    BINDINGS = [
        Binding("question_mark", "help", "help", key_display="?"),
        Binding("q", "quit", "quit"),
        Binding("u", "train_now", "train"),
        Binding("ctrl+z", "app.rollback", "undo update"),
        Binding("n", "new_conversation", "new"),
        Binding("m", "toggle_metrics", "metrics"),
        Binding("i", "focus_prompt", "type", show=False),
        Binding("escape", "escape", "leave box / stop", show=False),
    ]

    def __init__(self, store, config) -> None:
        super().__init__()
        self.store, self.config = store, config
        self.phase = Phase.LOADING
        self.round: Round | None = None
        self.interrupted: Round | None = None  # a round the engine died in: regenerated after the restart
        self.rng = random.Random(config.seed)
        self.conversation_id = store.latest_conversation() or store.new_conversation(self.config.system)

    def compose(self):
        self.status_bar = StatusBar(id="status")
        yield self.status_bar
        with Horizontal(id="body"):
            with Vertical(id="main"):
                yield ConversationPane(id="conversation")
                yield CandidatePane(self.config.candidates, self.config.method, id="candidates", classes="no-round")
                yield PromptInput(id="prompt", placeholder=PLACEHOLDERS[Phase.LOADING])
            yield MetricsPanel(self.config.method, id="metrics")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        history = [m for m in self.store.history(self.conversation_id) if m["role"] != "system"]
        version = self.store.latest_version()
        banner = (f"session {self.store.name} · resumed at v{version} · {len(history) // 2} earlier turns"
                  if history else f"session {self.store.name} · {self.config.method} · new conversation")
        self.conversation.show(history, banner)
        self.app.refresh_status(state="loading", note="starting the engine…", version=version,
                                pending=self.store.pending_count(self.config.method),
                                model=Path(self.config.model).name if self.config.model else "SmolLM2-135M-Instruct")
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

    @property
    def generating(self) -> bool:
        return self.phase is Phase.GENERATING

    def set_phase(self, phase: Phase) -> None:
        self.phase = phase
        ppo = phase is Phase.JUDGING and self.config.method == "ppo"
        down = phase is Phase.LOADING and self.app.engine_state == "error"
        self.prompt.placeholder = PPO_JUDGING if ppo else ENGINE_DOWN if down else PLACEHOLDERS[phase]
        self.candidates.judging = phase is Phase.JUDGING
        self.prompt.disabled = phase in (Phase.GENERATING, Phase.JUDGING)
        # On the pane, not the screen: a class on the screen restyles every widget in the conversation.
        self.candidates.set_class(phase not in (Phase.GENERATING, Phase.JUDGING), "no-round")
        if phase is Phase.JUDGING:
            self.candidates.focus_first()
        elif phase in (Phase.PROMPT, Phase.LOADING):
            self.prompt.focus()
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in LETTER_ACTIONS and isinstance(self.focused, PromptInput):
            return False
        return True

    # The engine, as the app reports it ----------------------------------------------------------

    def engine_ready(self) -> None:
        self.set_phase(Phase.PROMPT)
        if self.interrupted is not None:  # the engine died mid-round: the prompt is stored, ask again
            interrupted, self.interrupted = self.interrupted, None
            self.begin_round(interrupted.turn_id, interrupted.prompt)

    def ready_phase(self) -> Phase:
        """Where a finished round leaves the screen: the prompt, unless there is no engine to answer it."""
        return Phase.LOADING if self.app.engine_state in ("loading", "error") else Phase.PROMPT

    def engine_lost(self) -> None:
        if self.phase is Phase.GENERATING and self.round is not None:
            self.interrupted = self.round
            self.round = None
        if self.phase is not Phase.JUDGING:  # a finished round can still be judged and stored
            self.set_phase(Phase.LOADING)

    # A round --------------------------------------------------------------------------------

    def on_prompt_input_submitted(self, message: PromptInput.Submitted) -> None:
        if self.phase is not Phase.PROMPT:
            self.notify("wait for the engine" if self.phase is Phase.LOADING else "judge the candidates first")
            return
        turn_id = self.store.add_user_turn(self.conversation_id, message.text)
        self.prompt.clear()
        self.conversation.add_turn("user", message.text)
        self.begin_round(turn_id, self.store.prompt(turn_id))

    def begin_round(self, turn_id: int, prompt: list[dict]) -> None:
        self.round = Round.start(turn_id, prompt, self.config.candidates, self.rng, version=self.app.client.version)
        self.candidates.reset()
        self.set_phase(Phase.GENERATING)
        self.app.set_engine_state("generating", f"{self.config.candidates} candidates from v{self.round.version}")
        self.generate(self.round)

    @work(group="generate", exclusive=True)
    async def generate(self, round_: Round) -> None:
        views = self.candidates.views
        config = self.config
        try:
            async for event in self.app.client.generate(
                    round_.prompt, n=round_.n, max_new_tokens=config.max_new_tokens,
                    temperature=config.temperature, seed=self.rng.randrange(2**31)):
                if event["type"] == "token":
                    round_.texts[event["candidate"]] += event["text"]
                    views[round_.slot_of(event["candidate"])].append(event["text"])
                elif event["type"] == "done":
                    round_.version = event.get("version", round_.version)  # an update may have landed meanwhile
                    self.candidates_done(round_, event["candidates"])
        except EngineDied as exc:
            self.app.engine_died(exc)
            self.engine_lost()  # also when the death was already noticed: keep the prompt for the restart
        except EngineError as exc:
            self.store.log("error", f"generation failed: {exc}")
            self.notify(f"generation failed: {exc}", severity="error", timeout=10)
            self.round = None
            self.app.set_engine_state("idle")
            self.set_phase(Phase.PROMPT)

    def candidates_done(self, round_: Round, results: list[dict]) -> None:
        sampling = {"temperature": self.config.temperature, "top_p": 0.95, "max_new_tokens": self.config.max_new_tokens}
        round_.results = results
        round_.response_ids = self.store.add_responses(round_.turn_id, results, round_.version, sampling,
                                                       shown_order=round_.shown_order)
        for candidate, result in enumerate(results):
            self.candidates.views[round_.slot_of(candidate)].finish(result["text"], result)
        if self.app.engine_state == "generating":
            self.app.set_engine_state("training" if self.app.update_running else "idle")
        self.set_phase(Phase.JUDGING)
        if self.config.method == "dpo" and round_.n >= 2:
            self.score_reference(round_)

    @work(group="reference")
    async def score_reference(self, round_: Round) -> None:
        """Reference log-probs while the person reads, so the update later need not compute them."""
        texts = [r["text"] for r in round_.results]
        pairs = [(i, (i + 1) % round_.n) for i in range(0, round_.n, 2)]
        examples = [{"prompt": round_.prompt, "chosen": [{"role": "assistant", "content": texts[i]}],
                     "rejected": [{"role": "assistant", "content": texts[j]}]} for i, j in pairs]
        try:
            scored = await self.app.client.score_reference(examples)
        except (EngineDied, EngineError):
            return  # not needed: the update computes what is missing; a death is noticed elsewhere
        logps = {}
        for (i, j), example in zip(pairs, scored):
            logps[i], logps[j] = example["ref_chosen_logps"], example["ref_rejected_logps"]
        self.store.record_ref_logps([round_.response_ids[i] for i in logps], list(logps.values()))

    # Feedback ---------------------------------------------------------------------------------

    def on_candidate_pane_feedback(self, message: CandidatePane.Feedback) -> None:
        self.feedback(message.kind, message.slot, message.value)

    def feedback(self, kind: str, slot: int = 0, value: int | None = None) -> None:
        """Commit the judgment, then show it; only while judging."""
        r = self.round
        if self.phase is not Phase.JUDGING or r is None:
            self.notify("nothing to judge yet")
            return
        shown = [r.response_at(s) for s in range(r.n)]
        letter = SLOT_LETTERS[slot].upper()
        if kind == "pick":
            self.store.record_preference(r.turn_id, r.response_at(slot), r.others(slot), shown_order=shown)
            self.complete(slot, f"{letter} preferred over {r.n - 1} · stored")
        elif kind == "digit" and self.config.method == "ppo":
            self.rate(slot, value, "1-5")
        elif kind == "thumb":
            self.rate(slot, value, "thumbs")
        elif kind == "digit":
            if 1 <= value <= r.n and r.add_rank(value - 1):
                for i, better in enumerate(r.ranking[:-1]):
                    self.store.record_preference(r.turn_id, r.response_at(better),
                                                 [r.response_at(s) for s in r.ranking[i + 1:]], shown_order=shown)
                order = " > ".join(SLOT_LETTERS[s].upper() for s in r.ranking)
                self.complete(r.ranking[0], f"ranked {order} · stored")
            elif 1 <= value <= r.n:
                self.candidates.views[value - 1].mark(f"#{len(r.ranking)}")
        elif kind in ("tie", "both_bad", "skip"):
            outcome = {"skip": "skipped"}.get(kind, kind)
            self.store.record_preference(r.turn_id, None, shown, outcome=outcome, shown_order=shown)
            if kind == "tie":  # either may continue the conversation: the left one does
                self.store.choose(r.turn_id, r.response_at(0))
                self.complete(0, "tie · stored")
            else:
                self.complete(None, f"{outcome.replace('_', ' ')} · stored; ask again")
        elif kind == "edit":
            self.app.push_screen(EditorScreen(r.text_at(slot), f"edit {letter}: ctrl+s stores it"),
                                 lambda text: self.edited(r, slot, text))
        elif kind == "regenerate":
            self.begin_round(r.turn_id, r.prompt)

    def rate(self, slot: int, score: int, scale: str) -> None:
        r = self.round
        self.store.record_rating(r.response_at(slot), score, scale)
        r.scores[slot] = score if scale == "1-5" else (5 if score else 1)
        label = f"{score}/5" if scale == "1-5" else ("👍" if score else "👎")
        self.candidates.views[slot].mark(f"{label} stored", "rated")
        unrated = [s for s in range(r.n) if s not in r.scores]
        if unrated:
            self.candidates.views[unrated[0]].focus()
            self.app.feedback_committed()
        else:
            best = r.best_scored()
            self.store.choose(r.turn_id, r.response_at(best))
            self.complete(best, "rated · stored")

    def edited(self, round_: Round, slot: int, text: str | None) -> None:
        if text is None or self.round is not round_:
            return
        self.store.record_demonstration(round_.turn_id, text, edited_from=round_.response_at(slot))
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
        self.set_phase(self.ready_phase())
        self.app.feedback_committed()

    # Screen actions -------------------------------------------------------------------------------

    def action_new_conversation(self) -> None:
        if self.phase is Phase.GENERATING:
            self.notify("wait for the candidates (Esc stops them)")
            return
        self.conversation_id = self.store.new_conversation(self.config.system)
        self.round = None
        self.candidates.reset()
        self.conversation.show([], f"session {self.store.name} · new conversation")
        self.set_phase(self.ready_phase())

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

    def action_focus_prompt(self) -> None:
        if not self.prompt.disabled:
            self.prompt.focus()

    async def action_escape(self) -> None:
        if self.phase is Phase.GENERATING:
            await self.app.client.cancel()  # the engine stops within a token; `done` follows
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
        yield "Tie", "Both are as good (t)", lambda: self.feedback("tie")
        yield "Both bad", "Neither is acceptable (x)", lambda: self.feedback("both_bad")
        yield "Skip round", "No feedback; stored as skipped (s)", lambda: self.feedback("skip")
        yield "Edit reply", "Correct the focused candidate (e)", lambda: self.feedback("edit", slot())
        yield "Regenerate", "New candidates for the same prompt (r)", lambda: self.feedback("regenerate")
        yield "New conversation", "Start over (n)", self.action_new_conversation
        yield "Toggle metrics", "Sparklines of the updates (m)", self.action_toggle_metrics
        yield "Help", "Every key (?)", self.action_help
