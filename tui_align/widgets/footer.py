"""The key bar: Textual's Footer, rebuilt only when the keys it shows change."""

from __future__ import annotations

from textual.screen import Screen
from textual.widgets import Footer


class KeyFooter(Footer):
    """Textual's Footer rebuilds its row of keys (a widget per key, styled and laid out anew) on every
    bindings refresh: each focus move and phase change, most of which show the same keys again. This
    one compares what it would show first; the same keys cost nothing."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._shown: tuple | None = None

    def shown_keys(self) -> tuple:
        """What compose() draws from: each shown binding with whether it is enabled, and the palette key."""
        active = self.screen.active_bindings
        shown = tuple((b.binding, b.enabled, b.tooltip) for b in active.values() if b.binding.show)
        palette = active.get(self.app.COMMAND_PALETTE_BINDING)
        return shown + ((palette.binding, palette.enabled, palette.tooltip) if palette else (),)

    def bindings_changed(self, screen: Screen) -> None:
        self._bindings_ready = True
        if screen.app.app_focus and self.is_attached and screen is self.screen:
            self.call_after_refresh(self._recompose_if_changed)

    async def _recompose_if_changed(self) -> None:
        shown = self.shown_keys()
        if shown != self._shown:
            self._shown = shown
            await self.recompose()
