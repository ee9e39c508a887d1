"""The prompt box: Enter sends, ctrl+j (or alt+enter where the terminal reports it) inserts a newline.
Its placeholder is the hint line: what the next key does in each phase of a round."""

from __future__ import annotations

from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea

from tui_align.rounds import SLOT_LETTERS, Phase, Round

PLACEHOLDERS = {
    Phase.LOADING: "The model is loading… you can type already",
    Phase.PROMPT: "Type a prompt; Enter sends, ctrl+j adds a line, Esc for the other keys",
    Phase.GENERATING: "Candidates are streaming… Esc stops them",
    Phase.JUDGING: "Judge the candidates: a/b pick · t tie · x both bad · s skip · e edit · r regenerate",
}
RANK_JUDGING = "Rank them: press 1-{n} on the best, then the next… · a-{last} picks one · t tie · x bad · e edit"
PER_REPLY_JUDGING = {  # methods that judge each candidate on its own, one after another
    "ppo": "Scoring {letter}: 1-5 or +/- · ←/→ moves · {done} of {n} scored · e edit · r regenerate · s skip the rest",
    "kto": ("Marking {letter}: + desirable, - undesirable · ←/→ moves · {done} of {n} marked · e edit · r regenerate"
            " · s skip the rest"),
    "grpo": ("Scoring {letter} (1-5) · ←/→ moves · {done} of {n} scored: the group trains once all are · e edit"
             " · r regenerate · s skip the rest"),
}
ENGINE_DOWN = "The engine stopped: {note}"  # the loop's note says what ctrl+r does


def hint(phase: Phase, round_: Round | None, method: str, slot: int, engine_down: str | None) -> str:
    """The hint line: which candidate the next key judges (`slot`, the focused one) and how far the round is,
    else what `phase` allows; `engine_down` is the loop's note when the engine has stopped."""
    if phase is Phase.LOADING and engine_down is not None:
        return ENGINE_DOWN.format(note=engine_down)
    if phase is Phase.JUDGING and round_ is not None:
        if method in PER_REPLY_JUDGING:
            return PER_REPLY_JUDGING[method].format(letter=SLOT_LETTERS[slot].upper(), done=len(round_.scores),
                                                    n=round_.n)
        if round_.n > 2:
            ranked = RANK_JUDGING.format(n=round_.n, last=SLOT_LETTERS[round_.n - 1])
            if round_.ranking:
                return f"Ranked so far: {' > '.join(SLOT_LETTERS[s].upper() for s in round_.ranking)} · " + ranked
            return ranked
    return PLACEHOLDERS[phase]


class PromptInput(TextArea):
    BINDINGS = [
        Binding("ctrl+j,alt+enter,shift+enter", "newline", "newline", key_display="ctrl+j"),
    ]

    class Submitted(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, **kwargs) -> None:
        super().__init__(soft_wrap=True, tab_behavior="focus", show_line_numbers=False, **kwargs)

    async def _on_key(self, event) -> None:
        if event.key == "enter":  # TextArea would insert a newline; here Enter sends
            event.stop()
            event.prevent_default()
            text = self.text.strip()
            if text:
                self.post_message(self.Submitted(text))
            return
        await super()._on_key(event)

    def action_newline(self) -> None:
        self.insert("\n")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # With nothing to undo, ctrl+z falls through to the screen: roll back the model.
        if action == "undo" and not self.text:
            return False
        return super().check_action(action, parameters)
