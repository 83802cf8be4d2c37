"""The refiner pass and the server's view of the current model: a refiner taking over gets the prompt's
networks, but what `/embeddings` lists (the text-encoder widths of the model last prepared) stays the job's
own model's, since the refiner is per job."""
from __future__ import annotations

from pipeline.models.networks.registry import encoder_widths


def test_a_refiner_does_not_become_the_model_embeddings_are_listed_for(net_env) -> None:
    result = net_env.run("sdxl", refiner_checkpoint=net_env.ckpts["sd1"], refiner_switch_at=0.5)
    assert "Refiner: " in result.infotexts[0]  # the SD 1.x refiner took over
    xl, sd1 = encoder_widths(net_env.model("sdxl")), encoder_widths(net_env.model("sd1"))
    assert xl != sd1 and net_env.networks.last_widths == xl
