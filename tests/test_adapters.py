"""Tests for registry.adapters on tiny random BERT, RoBERTa and DistilBERT encoders (no hub access)."""

import copy
from collections.abc import Callable

import pytest
import torch
from safetensors.torch import save
from torch import nn
from transformers import (
    BertConfig,
    BertModel,
    DistilBertConfig,
    DistilBertModel,
    GPT2Config,
    GPT2Model,
    PreTrainedModel,
    RobertaConfig,
    RobertaModel,
)

from registry.model.adapters import (
    Adapter,
    AdapterModel,
    AdapterWrapper,
    TaskLayerNorm,
    trainable_parameters,
)
from registry.errors import ArtifactError, NoMatchingModules

LAYERS = 2
ADAPTER_SIZE = 16
ADAPTER_TENSORS = ("down_weight", "down_bias", "up_weight", "up_bias")


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def tiny_bert() -> PreTrainedModel:
    """A 2-layer BERT with hidden size 32."""
    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2, intermediate_size=37
    )
    return BertModel(config)


def tiny_roberta() -> PreTrainedModel:
    """A 2-layer RoBERTa with hidden size 32."""
    config = RobertaConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2, intermediate_size=37
    )
    return RobertaModel(config)


def tiny_distilbert() -> PreTrainedModel:
    """A 2-layer DistilBERT with hidden size 32."""
    return DistilBertModel(DistilBertConfig(vocab_size=100, dim=32, n_layers=LAYERS, n_heads=2, hidden_dim=37))


# name -> (builder, adapter target names of layer i, layer norm names of layer i)
ARCHS: dict[str, tuple[Callable[[], PreTrainedModel], tuple[str, str], tuple[str, str]]] = {
    "bert": (
        tiny_bert,
        ("encoder.layer.{i}.attention.output.dropout", "encoder.layer.{i}.output.dropout"),
        ("encoder.layer.{i}.attention.output.LayerNorm", "encoder.layer.{i}.output.LayerNorm"),
    ),
    "roberta": (
        tiny_roberta,
        ("encoder.layer.{i}.attention.output.dropout", "encoder.layer.{i}.output.dropout"),
        ("encoder.layer.{i}.attention.output.LayerNorm", "encoder.layer.{i}.output.LayerNorm"),
    ),
    "distilbert": (
        tiny_distilbert,
        ("transformer.layer.{i}.attention.out_lin", "transformer.layer.{i}.ffn.dropout"),
        ("transformer.layer.{i}.sa_layer_norm", "transformer.layer.{i}.output_layer_norm"),
    ),
}


def base_model(arch: str) -> PreTrainedModel:
    """A seeded tiny base encoder in eval mode, its LayerNorms moved off the 1/0 init so copying them matters."""
    torch.manual_seed(0)
    model = ARCHS[arch][0]().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.add_(0.1 * torch.randn_like(module.weight))
                module.bias.add_(0.1 * torch.randn_like(module.bias))
    return model


def layer_names(patterns: tuple[str, str]) -> list[str]:
    """The two per-layer names of every layer, in module order."""
    return [p.format(i=i) for i in range(LAYERS) for p in patterns]


def batch(seed: int = 0, size: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids and an attention mask with some padding."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, 100, (size, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
    attention_mask[-1, 3:] = 0
    return input_ids, attention_mask


def perturb(model: AdapterModel, seed: int) -> None:
    """Move every trainable tensor away from its initial value, so tasks differ clearly."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))


def expected_task_keys(model: AdapterModel) -> set[str]:
    """The keys task_state_dict must produce for a model."""
    adapters = {f"{name}.adapter.{t}" for name in model.injected for t in ADAPTER_TENSORS}
    norms = {f"{name}.{t}" for name in model.layer_norms for t in ("weight", "bias")}
    return adapters | norms | {"head.weight", "head.bias"}


@pytest.mark.parametrize("arch", ARCHS)
def test_injection_wraps_two_targets_and_two_layer_norms_per_layer(arch: str) -> None:
    _, targets, norms = ARCHS[arch]
    base = base_model(arch)
    inner_types = [type(base.get_submodule(name)) for name in layer_names(targets)]
    model = AdapterModel(base, ADAPTER_SIZE, [2])
    assert model.injected == layer_names(targets)
    assert model.layer_norms == layer_names(norms)
    for name, inner_type in zip(model.injected, inner_types):
        wrapper = model.encoder.get_submodule(name)
        assert isinstance(wrapper, AdapterWrapper) and type(wrapper.inner) is inner_type
        assert isinstance(wrapper.adapter, Adapter)
    assert all(isinstance(model.encoder.get_submodule(name), TaskLayerNorm) for name in model.layer_norms)


@pytest.mark.parametrize("arch", ARCHS)
def test_untrained_adapters_leave_the_base_almost_unchanged(arch: str) -> None:
    base = base_model(arch)
    model = AdapterModel(copy.deepcopy(base), ADAPTER_SIZE, [2]).eval()
    input_ids, attention_mask = batch()
    with torch.no_grad():
        expected = base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        actual = model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    # Measured max deviation on these tiny random bases is ~1e-4 (hidden states are O(1)); 1e-3 leaves 10x room.
    assert torch.allclose(actual, expected, atol=1e-3, rtol=0)
    assert not torch.equal(actual, expected)  # the adapters do run


@pytest.mark.parametrize("arch", ARCHS)
def test_adapters_with_zero_up_projection_reproduce_the_base_exactly(arch: str) -> None:
    base = base_model(arch)
    model = AdapterModel(copy.deepcopy(base), ADAPTER_SIZE, [2]).eval()
    with torch.no_grad():
        for name in model.injected:
            adapter = model.encoder.get_submodule(name).adapter
            adapter.up_weight.zero_()
            adapter.up_bias.zero_()
    input_ids, attention_mask = batch()
    with torch.no_grad():
        expected = base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        actual = model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        cls = model.encode(input_ids, attention_mask)
    assert torch.equal(actual, expected)
    assert torch.equal(cls, expected[:, 0])


@pytest.mark.parametrize("arch", ARCHS)
def test_only_adapters_layer_norms_and_head_train(arch: str) -> None:
    model = AdapterModel(base_model(arch), ADAPTER_SIZE, [3]).train()
    trainable = {f"encoder.{key}" for key in expected_task_keys(model) if not key.startswith("head.")}
    trainable |= {"heads.0.weight", "heads.0.bias"}
    params = dict(model.named_parameters())
    assert {name for name, p in params.items() if p.requires_grad} == trainable
    assert not params["encoder.embeddings.LayerNorm.weight"].requires_grad
    assert not params["encoder.embeddings.LayerNorm.bias"].requires_grad

    model(*batch()).pow(2).sum().backward()
    for name, param in params.items():
        if name in trainable:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name


def test_minilm_trainable_share_matches_closed_form(minilm_path) -> None:
    config = BertConfig.from_json_file(minilm_path / "config.json")
    torch.manual_seed(0)
    base = BertModel(config)
    base_count = count_parameters(base)
    model = AdapterModel(base, 64, [2])
    h, m, layers, n = config.hidden_size, 64, config.num_hidden_layers, 2
    per_layer = 2 * (2 * h * m + m + h) + 2 * (2 * h)
    expected = layers * per_layer + h * n + n
    share = trainable_parameters(model) / base_count
    print(f"MiniLM-L6 m=64: {trainable_parameters(model)} trainable of {base_count} base = {share:.2%}")
    assert trainable_parameters(model) == expected == 605_186
    assert 0.02 < share < 0.04
    # layer norms are replaced, not duplicated: the total grows by adapters and head only
    assert count_parameters(model) == base_count + layers * 2 * (2 * h * m + m + h) + h * n + n


@pytest.mark.parametrize("arch", ARCHS)
def test_task_state_dict_round_trips_into_a_fresh_model(arch: str) -> None:
    base = base_model(arch)
    torch.manual_seed(1)
    source = AdapterModel(copy.deepcopy(base), ADAPTER_SIZE, [3]).eval()
    perturb(source, seed=1)
    tensors = source.task_state_dict()
    torch.manual_seed(2)
    target = AdapterModel(copy.deepcopy(base), ADAPTER_SIZE, [3]).eval()
    input_ids, attention_mask = batch()
    with torch.no_grad():
        assert not torch.equal(target(input_ids, attention_mask), source(input_ids, attention_mask))
        target.load_task_state_dict(tensors)
        assert torch.equal(target(input_ids, attention_mask), source(input_ids, attention_mask))

    assert set(tensors) == expected_task_keys(source)
    assert all(t.device.type == "cpu" and t.is_contiguous() for t in tensors.values())
    assert tensors["head.weight"].data_ptr() != source.heads[0].weight.data_ptr()


def test_task_state_dict_keys_carry_no_task_index() -> None:
    base = base_model("bert")
    single = AdapterModel(copy.deepcopy(base), ADAPTER_SIZE, [3])
    multi = AdapterModel(copy.deepcopy(base), ADAPTER_SIZE, [2, 3, 1])
    single_tensors = single.task_state_dict()
    multi_tensors = multi.task_state_dict(1)
    assert {k: v.shape for k, v in multi_tensors.items()} == {k: v.shape for k, v in single_tensors.items()}
    assert not any("heads" in key for key in multi_tensors)


def drop_key(tensors: dict[str, torch.Tensor]) -> None:
    """Remove one adapter tensor."""
    del tensors["encoder.layer.0.output.dropout.adapter.up_bias"]


def add_key(tensors: dict[str, torch.Tensor]) -> None:
    """Add a tensor the model has no place for."""
    tensors["encoder.layer.9.output.dropout.adapter.up_bias"] = torch.zeros(32)


def reshape_adapter(tensors: dict[str, torch.Tensor]) -> None:
    """Give one adapter a different bottleneck size."""
    tensors["encoder.layer.1.attention.output.dropout.adapter.down_weight"] = torch.zeros(32, ADAPTER_SIZE + 1)


def reshape_head(tensors: dict[str, torch.Tensor]) -> None:
    """Give the head a different number of outputs."""
    tensors["head.weight"] = torch.zeros(5, 32)


@pytest.mark.parametrize("corrupt", [drop_key, add_key, reshape_adapter, reshape_head])
def test_loading_task_tensors_that_do_not_fit_raises_artifact_error(corrupt: Callable[[dict], None]) -> None:
    model = AdapterModel(base_model("bert"), ADAPTER_SIZE, [3])
    before = model.task_state_dict()
    tensors = {key: value + 1 for key, value in before.items()}
    corrupt(tensors)
    with pytest.raises(ArtifactError) as error:
        model.load_task_state_dict(tensors)
    assert "\n" not in str(error.value)
    after = model.task_state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)  # nothing half-loaded


@pytest.mark.parametrize("arch", ARCHS)
def test_mixed_task_batch_matches_single_task_models(arch: str) -> None:
    base = base_model(arch)
    head_sizes = [2, 3, 1]
    singles = []
    for task, n_outputs in enumerate(head_sizes):
        single = AdapterModel(copy.deepcopy(base), ADAPTER_SIZE, [n_outputs]).eval()
        perturb(single, seed=10 + task)
        singles.append(single)
    multi = AdapterModel(copy.deepcopy(base), ADAPTER_SIZE, head_sizes).eval()
    for task, single in enumerate(singles):
        multi.load_task_state_dict(single.task_state_dict(), task)

    input_ids, attention_mask = batch(size=7)
    task_ids = torch.tensor([0, 2, 1, 1, 0, 2, 1])
    with torch.no_grad():
        mixed = multi.encode(input_ids, attention_mask, task_ids)
        per_task = [single.encode(input_ids, attention_mask) for single in singles]
    expected = torch.stack([per_task[int(t)][i] for i, t in enumerate(task_ids)])
    assert torch.allclose(mixed, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(per_task[0], per_task[1], atol=1e-3)  # routing to the wrong task would show
    assert not torch.allclose(per_task[1], per_task[2], atol=1e-3)
    with pytest.raises(ValueError):
        multi.encode(input_ids, attention_mask)


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_dropout_follows_train_and_eval(arch: str) -> None:
    model = AdapterModel(base_model(arch), ADAPTER_SIZE, [2])
    assert not model.training  # starts in the mode of the encoder it was given
    input_ids, attention_mask = batch()
    with torch.no_grad():
        model.train()
        assert not torch.equal(model(input_ids, attention_mask), model(input_ids, attention_mask))
        model.encoder.eval()  # only the head's dropout is left on
        assert not torch.equal(model(input_ids, attention_mask), model(input_ids, attention_mask))
        model.eval()
        assert torch.equal(model(input_ids, attention_mask), model(input_ids, attention_mask))


def tiny_gpt2() -> PreTrainedModel:
    """A 2-layer GPT-2: an unsupported architecture."""
    return GPT2Model(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0))


def layerless_bert() -> PreTrainedModel:
    """A supported model type with no transformer layer to adapt."""
    return BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=0, num_attention_heads=2))


@pytest.mark.parametrize(("build", "model_type"), [(tiny_gpt2, "gpt2"), (layerless_bert, "bert")])
def test_model_without_targets_raises_no_matching_modules(
    build: Callable[[], PreTrainedModel], model_type: str
) -> None:
    with pytest.raises(NoMatchingModules) as error:
        AdapterModel(build(), ADAPTER_SIZE, [2])
    message = str(error.value)
    assert f"'{model_type}'" in message and "distilbert" in message and "\n" not in message


def test_a_partly_renamed_model_fails_instead_of_half_injecting() -> None:
    """If one layer's modules were renamed (as a future transformers might), injection refuses the whole model."""
    base = tiny_bert()
    layer = base.encoder.layer[1]
    layer.attention.output.renamed_dropout = layer.attention.output.dropout
    del layer.attention.output.dropout
    with pytest.raises(NoMatchingModules) as error:
        AdapterModel(base, ADAPTER_SIZE, [2])
    assert str(error.value) == (
        "matched 3 adapter targets and 4 LayerNorms in a 'bert' model of 2 layers, expected 4 of each; this "
        "transformers version names its modules differently: use a supported transformers version"
    )


def test_same_seed_gives_identical_task_bytes() -> None:
    base = base_model("bert")

    def task_bytes(seed: int) -> bytes:
        torch.manual_seed(seed)
        return save(AdapterModel(copy.deepcopy(base), 64, [2]).task_state_dict())

    assert task_bytes(7) == task_bytes(7)
    assert task_bytes(7) != task_bytes(8)
