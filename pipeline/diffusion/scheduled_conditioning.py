"""A batch's conditioning over one sampling pass, with prompt editing (`[a:b:when]`) and alternation
(`[a|b]`) scheduled by model call: each distinct text is encoded once by the PromptEncoder
(conditioning.py), and `at(step)` stacks the batch's conds for a call."""
from __future__ import annotations

from collections.abc import Sequence

from pipeline.diffusion.conditioning import Cond, PromptEncoder, stack_conds
from pipeline.diffusion.prompts import get_prompt_schedules, schedule_index_at_step
from pipeline.models.networks.tags import strip_tags


class ScheduledConditioning:
    """The conditioning of a batch of prompts over one sampling pass, with prompt editing and alternation.

    Every distinct scheduled text is encoded once (through the encoder's cache). During sampling call
    `at(step)` with `step` = the number of denoiser (model) calls already made in this pass: 0 on the first
    call, then 1, 2, ... (A1111's `CFGDenoiser.step`). Build it with `steps` = the number of denoiser calls
    the pass makes (A1111 uses the sampler's total_steps). For the hires pass give `steps` = the first pass's
    count and `hires_steps` = the hires pass's count.
    """

    def __init__(
        self,
        encoder: PromptEncoder,
        prompts: Sequence[str],
        steps: int,
        *,
        clip_skip: int = 1,
        hires_steps: int | None = None,
        negative: bool = False,
        old_scheduling: bool = False,
    ):
        # extra-network tags (`<lora:...>`, any `<type:...>`) never reach a positive prompt's text encoder;
        # A1111 leaves a negative prompt's tags as literal text
        self.prompts = list(prompts) if negative else [strip_tags(p) for p in prompts]
        self.schedules = get_prompt_schedules(self.prompts, steps, hires_steps, old_scheduling)
        groups: dict[str, list[Cond]] = {}
        for prompt, schedule in zip(self.prompts, self.schedules):
            if prompt not in groups:
                groups[prompt] = encoder.encode_group([t for _, t in schedule], clip_skip, negative=negative)
        self._conds = [groups[p] for p in self.prompts]
        self._last: tuple[tuple[int, ...], Cond] | None = None

    @property
    def boundaries(self) -> list[int]:
        """The end_at_step values where some prompt of the batch changes text (sorted, distinct)."""
        return sorted({end for schedule in self.schedules for end, _ in schedule})

    def indices_at(self, step: int) -> tuple[int, ...]:
        return tuple(schedule_index_at_step(s, step) for s in self.schedules)

    def texts_at(self, step: int) -> list[str]:
        return [s[i][1] for s, i in zip(self.schedules, self.indices_at(step))]

    def at(self, step: int) -> Cond:
        """The batch's Cond at denoiser step `step` (0-based); reused while no prompt changes."""
        picks = self.indices_at(step)
        if self._last is None or self._last[0] != picks:
            self._last = (picks, stack_conds([conds[i] for conds, i in zip(self._conds, picks)]))
        return self._last[1]
