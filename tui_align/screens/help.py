"""`?`: every key, grouped by when it works."""

from __future__ import annotations

from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# tui-align: keys

A **round**: type a prompt, press **Enter**; the candidates stream in; judge them; the
reply you chose continues the conversation. Every judgement is stored before the screen
says so, and every *K* new training rows train the model in the background (*feedback 1/2* in
the status bar) while you keep chatting. The line under the candidates always says what the
next key judges. A session with more untrained rows than one update takes says *backlog*:
they are trained a window at a time while you go on (`tui-align replay` trains on all of them).

## While typing
| key | |
|---|---|
| Enter | send the prompt |
| ctrl+j / alt+enter | new line |
| Esc | leave the prompt box (to use the single-letter keys) |
| ctrl+z | roll back the model one version (when the box is empty) |
| ctrl+t | take back the last judgment: never trained on from now, its round opens again |
| ctrl+p | command palette: every action by name |

## When the candidates are done
| key | |
|---|---|
| a / b (c, d...) | this one is better |
| 1..N | rank all of them, best first (more than two candidates) |
| 1-5, + / - | score / thumbs for the focused one (PPO sessions; a second score replaces the first) |
| + / - | mark the focused one desirable / undesirable (KTO sessions: each reply trains on its own; a second mark replaces the first) |
| 1-5 | score the focused one (GRPO sessions: once all N are scored, the group trains; a second score replaces the first) |
| t | tie |
| x | both bad |
| s | skip this round (stored as skipped) |
| e | edit the focused one: stored as a demonstration and preferred over every reply shown |
| r | regenerate |
| ← → / tab | move between candidates |

## Any time the prompt box is not focused
| key | |
|---|---|
| u | train now on the feedback waiting |
| ctrl+z | undo the last update (roll back one version) |
| ctrl+t | take back the last judgment |
| n | new conversation |
| m | metrics panel |
| l | the arena's leaderboard: versions rated from blind votes |
| ctrl+r | restart the engine at the last version (after an error) |
| i | back to the prompt box |
| ? | this help |
| q | quit (waits for a running update, or asks) |
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss(None)", "close")]

    def compose(self):
        with VerticalScroll(id="help-box"):
            yield Markdown(HELP)
