"""Base models loaded the way PEFT loads them: the class from the adapter (task_type, else
auto_mapping, else the base config), task heads sized to the adapter, encoder-decoders fed decoder
inputs, models found under a models directory or in the Hugging Face cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from adapters.cli import main
from adapters.compress.base_models import choose_class, find_base_model, load_base_model
from adapters.compress.calibration import token_batches, with_adapter
from adapters.compress.distill import DistillConfig
from adapters.compress.errors import CompressError
from adapters.compress.gate import BASIS_AGREEMENT, DEFAULT_PREDICTIONS, Gate
from adapters.compress.nola import NolaCodec, NolaConfig
from adapters.compress.peft_io import read_adapter
from adapters.compress.pipeline import split_for_predictions
from adapters.registry.codecs import CodecEnvironment
from tests.factories import (
    char_tokenizer,
    save_headless_bert,
    save_tiny_llama,
    save_tiny_t5,
    synthesize_adapter,
    template_texts,
)

BERT_TARGETS = ["query", "value"]
LLAMA_TARGETS = ["q_proj", "v_proj"]
T5_TARGETS = ["q", "v"]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    return {
        "bert": save_headless_bert(root / "bert"),
        "llama": save_tiny_llama(root / "llama"),
        "t5": save_tiny_t5(root / "t5"),
    }


def _trained_model(kind: str, bases: dict[str, Path]):
    """(base directory, model the adapter is trained on, LoRA options, expected class, per token)."""
    import transformers as tf

    if kind == "seq_cls_auto_mapping":  # task_type null: PEFT records the class in auto_mapping
        model = tf.BertForSequenceClassification.from_pretrained(bases["bert"], num_labels=3)
        lora = {"target_modules": BERT_TARGETS, "modules_to_save": ["classifier"]}
        return bases["bert"], model, lora, "BertForSequenceClassification", False
    if kind == "seq_cls":
        model = tf.BertForSequenceClassification.from_pretrained(bases["bert"], num_labels=5)
        lora = {"target_modules": BERT_TARGETS, "task_type": "SEQ_CLS"}
        return bases["bert"], model, lora, "BertForSequenceClassification", False
    if kind == "token_cls":
        model = tf.BertForTokenClassification.from_pretrained(bases["bert"], num_labels=4)
        lora = {"target_modules": BERT_TARGETS, "task_type": "TOKEN_CLS"}
        return bases["bert"], model, lora, "BertForTokenClassification", True
    if kind == "question_answering":
        model = tf.BertForQuestionAnswering.from_pretrained(bases["bert"])
        lora = {"target_modules": BERT_TARGETS, "task_type": "QUESTION_ANS"}
        return bases["bert"], model, lora, "BertForQuestionAnswering", False
    if kind == "feature_extraction":
        model = tf.BertModel.from_pretrained(bases["bert"])
        lora = {"target_modules": BERT_TARGETS, "task_type": "FEATURE_EXTRACTION"}
        return bases["bert"], model, lora, "BertModel", True
    if kind == "causal_lm":
        model = tf.LlamaForCausalLM.from_pretrained(bases["llama"])
        lora = {"target_modules": LLAMA_TARGETS, "task_type": "CAUSAL_LM"}
        return bases["llama"], model, lora, "LlamaForCausalLM", True
    if kind == "causal_lm_resized":  # new tokens: the saved embeddings and head are larger
        model = tf.LlamaForCausalLM.from_pretrained(bases["llama"])
        model.resize_token_embeddings(136)
        lora = {
            "target_modules": LLAMA_TARGETS,
            "task_type": "CAUSAL_LM",
            "modules_to_save": ["lm_head", "embed_tokens"],
        }
        return bases["llama"], model, lora, "LlamaForCausalLM", True
    if kind == "llama_seq_cls":  # a decoder's classifier: the score head, the pad id finds the last token
        model = tf.LlamaForSequenceClassification.from_pretrained(bases["llama"], num_labels=2)
        model.config.pad_token_id = char_tokenizer().pad_token_id
        lora = {"target_modules": LLAMA_TARGETS, "task_type": "SEQ_CLS"}
        return bases["llama"], model, lora, "LlamaForSequenceClassification", False
    if kind == "seq2seq":
        model = tf.T5ForConditionalGeneration.from_pretrained(bases["t5"])
        lora = {"target_modules": T5_TARGETS, "task_type": "SEQ_2_SEQ_LM"}
        return bases["t5"], model, lora, "T5ForConditionalGeneration", True
    raise AssertionError(kind)


def make_case(kind: str, bases: dict[str, Path], out: Path):
    base, model, lora, expected, per_token = _trained_model(kind, bases)
    peft_model = synthesize_adapter(model.eval(), out, seed=3, scale=0.2, r=4, lora_alpha=8, **lora)
    return base, peft_model, expected, per_token


def main_output(out) -> torch.Tensor:
    for name in ("logits", "start_logits", "last_hidden_state"):
        value = getattr(out, name, None)
        if value is not None:
            return value
    raise AssertionError(type(out))


def run_model(model, texts) -> torch.Tensor:
    (batch,) = token_batches(char_tokenizer(), texts, batch_size=len(texts), model=model)
    with torch.no_grad():
        return main_output(model(**batch))


TEXTS = template_texts(24, seed=4)
# Enough texts for a classifier's held-out gate (one prediction per text, at least 300).
MANY_TEXTS = list(dict.fromkeys(template_texts(2000, seed=4)))
KINDS = [
    "seq_cls_auto_mapping",
    "seq_cls",
    "token_cls",
    "question_answering",
    "feature_extraction",
    "causal_lm",
    "causal_lm_resized",
    "llama_seq_cls",
    "seq2seq",
]


@pytest.mark.parametrize("kind", KINDS)
def test_the_base_model_with_the_adapter_is_the_model_it_was_trained_on(kind, bases, tmp_path):
    base, original, expected, _ = make_case(kind, bases, tmp_path / "adapter")
    model, _ = load_base_model(base, adapter=read_adapter(tmp_path / "adapter"))
    assert type(model).__name__ == expected
    without = run_model(model, TEXTS[:6])
    reloaded = with_adapter(model, tmp_path / "adapter")
    want, got = run_model(original, TEXTS[:6]), run_model(reloaded, TEXTS[:6])
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # The adapter changes the output: what matches came from the adapter, not from the base alone.
    assert not torch.allclose(without, want, atol=1e-3)


def test_the_scenario_is_a_headless_base_and_a_task_type_free_adapter(bases, tmp_path):
    make_case("seq_cls_auto_mapping", bases, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] is None
    assert config["auto_mapping"]["base_model_class"] == "BertForSequenceClassification"
    assert json.loads((bases["bert"] / "config.json").read_text())["architectures"] == ["BertModel"]
    # Without the adapter the base config decides, as it always has.
    model, _ = load_base_model(bases["bert"])
    assert type(model).__name__ == "BertModel"


def held_out_predictions(texts, per_token: bool, per_text: int = 1) -> int:
    """The predictions of the held-out texts the pipeline picks (the same seeded split)."""
    lengths = [len(ids) for ids in char_tokenizer()(texts)["input_ids"]]
    counts = lengths if per_token else [per_text] * len(texts)
    return split_for_predictions(texts, counts, DEFAULT_PREDICTIONS).held_out_predictions


@pytest.mark.parametrize(
    "kind", ["seq_cls_auto_mapping", "token_cls", "causal_lm", "seq2seq", "question_answering"]
)
def test_compression_against_the_headless_or_task_free_base_distills_and_gates(kind, bases, tmp_path):
    base, _, _, per_token = make_case(kind, bases, tmp_path / "adapter")
    checkpoint = read_adapter(tmp_path / "adapter")
    codec = NolaCodec(
        NolaConfig(ratio=2),
        base_model=base,
        texts=MANY_TEXTS,
        distill=DistillConfig(steps=4, batch_size=8, eval_every=2),
    )
    report = codec.compress(checkpoint, tmp_path / "a.nola")
    record = report.fidelity
    # Distillation ran on this model (it keeps the initial fit where that validates better).
    assert record["distill"]["steps_run"] == 4 and record["distill"]["loss_last"] > 0
    # Measured on held-out text: per text for a classifier, per token (decoder token for T5), two
    # (start and end) per text for question answering.
    per_text = 2 if kind == "question_answering" else 1
    expected = held_out_predictions(MANY_TEXTS, per_token, per_text)
    assert record["held_out"]["predictions"] == expected >= 300
    assert 0 <= record["held_out"]["agreement"] <= 1
    # Enough predictions for the gate to judge behaviour, not the data-free proxy.
    verdict = Gate(min_agreement=0.0).check(record)
    assert verdict["basis"] == BASIS_AGREEMENT and verdict["passed"] and verdict["predictions"] == expected


def test_feature_extraction_distills_on_hidden_states(bases, tmp_path):
    base, _, _, _ = make_case("feature_extraction", bases, tmp_path / "adapter")
    codec = NolaCodec(
        NolaConfig(ratio=2),
        base_model=base,
        texts=MANY_TEXTS,
        distill=DistillConfig(steps=4, batch_size=8, eval_every=2),
    )
    report = codec.compress(read_adapter(tmp_path / "adapter"), tmp_path / "a.nola")
    held = report.fidelity["held_out"]
    assert report.fidelity["distill"]["steps_run"] == 4 and 0 < held["hidden_rel_error"] < 1
    assert held["predictions"] == held_out_predictions(MANY_TEXTS, True)


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ("CAUSAL_LM", "AutoModelForCausalLM"),
        ("SEQ_CLS", "AutoModelForSequenceClassification"),
        ("TOKEN_CLS", "AutoModelForTokenClassification"),
        ("SEQ_2_SEQ_LM", "AutoModelForSeq2SeqLM"),
        ("QUESTION_ANS", "AutoModelForQuestionAnswering"),
        ("FEATURE_EXTRACTION", "AutoModel"),
    ],
)
def test_the_task_type_names_the_auto_class_as_in_peft(task, expected):
    from peft.auto import MODEL_TYPE_TO_PEFT_MODEL_MAPPING
    from transformers import BertConfig

    assert task in MODEL_TYPE_TO_PEFT_MODEL_MAPPING  # the same task types PEFT knows
    config = BertConfig(architectures=["BertForMaskedLM"])
    auto_mapping = {"base_model_class": "BertForTokenClassification", "parent_library": "transformers"}
    cls, reason = choose_class({"task_type": task, "auto_mapping": auto_mapping}, config)
    assert (cls.__name__, reason) == (expected, f"task_type {task}")


def test_auto_mapping_then_the_base_config_decide():
    from transformers import BertConfig

    config = BertConfig(architectures=["BertModel"])
    mapping = {
        "base_model_class": "BertForSequenceClassification",
        "parent_library": "transformers.models.bert.modeling_bert",
    }
    cls, reason = choose_class({"task_type": None, "auto_mapping": mapping}, config)
    assert cls.__name__ == "BertForSequenceClassification" and reason.startswith("auto_mapping")
    # A class from outside transformers (or one it does not have) is not imported: the config decides.
    for outside in (
        {**mapping, "parent_library": "evil.models"},
        {**mapping, "base_model_class": "NoSuchModel"},
        {**mapping, "base_model_class": "Trainer"},  # in transformers, but no model
    ):
        cls, reason = choose_class({"auto_mapping": outside}, config)
        assert cls.__name__ == "AutoModel" and reason == "config architectures BertModel"
    seq2seq = choose_class({}, type(config).from_dict({"architectures": ["T5ForConditionalGeneration"]}))
    assert seq2seq[0].__name__ == "AutoModel"  # a BertConfig is no encoder-decoder
    from transformers import T5Config

    t5 = T5Config(architectures=["T5ForConditionalGeneration"])
    assert choose_class({}, t5)[0].__name__ == "AutoModelForSeq2SeqLM"


def without_auto_mapping(adapter: Path) -> Path:
    """The adapter as an older PEFT saved it: no task_type and no auto_mapping."""
    config_path = adapter / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config.pop("auto_mapping", None)
    config_path.write_text(json.dumps(config))
    return adapter


def test_missing_modules_are_named_in_one_line(bases, tmp_path):
    make_case("seq_cls_auto_mapping", bases, tmp_path / "adapter")
    adapter = without_auto_mapping(tmp_path / "adapter")
    with pytest.raises(CompressError) as caught:
        load_base_model(bases["bert"], adapter=adapter)
    message = str(caught.value)
    assert "\n" not in message
    assert "BertModel" in message and "config architectures BertModel" in message
    assert "bert.encoder.layer.0.attention.self.query" in message and "more" in message
    # The same line from the commands that load base models, before any work is done.
    output = tmp_path / "out.nola"
    texts, stats = str(texts_file(tmp_path)), str(tmp_path / "stats.safetensors")
    for command in (["compress", "-o", str(output)], ["calibrate", "--texts", texts, "-o", stats]):
        args = [*command, str(adapter), "--base-model", str(bases["bert"])]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert lines[-1].startswith(
            "Error: the adapter's modules are not in the base model loaded as BertModel"
        )
        assert "bert.encoder.layer.0.attention.self.query" in lines[-1]
        assert not output.exists() and not (tmp_path / "stats.safetensors").exists()


def texts_file(tmp_path: Path) -> Path:
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(TEXTS))
    return path


def test_a_head_that_fits_no_label_count_is_refused(bases, tmp_path):
    make_case("seq_cls", bases, tmp_path / "adapter")
    checkpoint = read_adapter(tmp_path / "adapter")
    key = "base_model.model.classifier.weight"
    checkpoint.tensors[key] = torch.zeros(5, 31)  # a classifier over another hidden size
    with pytest.raises(CompressError, match=r"classifier.weight has shape \(5, 31\)"):
        load_base_model(bases["bert"], adapter=checkpoint)


def test_calibrate_uses_the_adapter_class(bases, tmp_path):
    make_case("seq_cls_auto_mapping", bases, tmp_path / "adapter")
    stats = tmp_path / "stats.safetensors"
    result = CliRunner().invoke(
        main,
        [
            *["calibrate", str(tmp_path / "adapter"), "--base-model", str(bases["bert"])],
            *["--texts", str(texts_file(tmp_path)), "-o", str(stats), "--json"],
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["modules"] == 4  # query and value of two layers


# --- finding base models ---------------------------------------------------------------------


def hf_snapshot(cache: Path, model_id: str, revision: str, source: Path | None = None) -> Path:
    """A model in the Hugging Face cache layout: models--org--name/snapshots/<revision>/."""
    import shutil

    snapshot = cache / ("models--" + model_id.replace("/", "--")) / "snapshots" / revision
    if source is not None:
        shutil.copytree(source, snapshot)
    else:
        snapshot.mkdir(parents=True)
        (snapshot / "config.json").write_text("{}")
    return snapshot


def set_ref(cache: Path, model_id: str, revision: str) -> None:
    refs = cache / ("models--" + model_id.replace("/", "--")) / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    (refs / "main").write_text(revision)


@pytest.fixture
def no_hf_env(monkeypatch):
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_hugging_face_cache_is_found_by_its_environment(no_hf_env, tmp_path):
    monkeypatch = no_hf_env
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    default = tmp_path / "home" / ".cache" / "huggingface" / "hub"
    snapshot = hf_snapshot(default, "acme/tiny", "abc")
    assert find_base_model("acme/tiny") == (snapshot, "Hugging Face cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert find_base_model("acme/tiny") is None
    xdg = hf_snapshot(tmp_path / "xdg" / "huggingface" / "hub", "acme/tiny", "abc")
    assert find_base_model("acme/tiny") == (xdg, "Hugging Face cache")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    home = hf_snapshot(tmp_path / "hf-home" / "hub", "acme/tiny", "abc")
    assert find_base_model("acme/tiny") == (home, "Hugging Face cache")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    assert find_base_model("acme/tiny") is None
    hub = hf_snapshot(tmp_path / "hub-cache", "acme/tiny", "abc")
    assert find_base_model("acme/tiny") == (hub, "Hugging Face cache")


def test_the_revision_refs_main_names_comes_first(no_hf_env, tmp_path):
    cache = tmp_path / "hub"
    no_hf_env.setenv("HF_HUB_CACHE", str(cache))
    old = hf_snapshot(cache, "acme/tiny", "1111")
    new = hf_snapshot(cache, "acme/tiny", "2222")
    os.utime(old / "config.json", (1_000, 1_000))
    assert find_base_model("acme/tiny")[0] == new  # no ref: the newest snapshot
    set_ref(cache, "acme/tiny", "1111\n")
    assert find_base_model("acme/tiny")[0] == old
    for bad in ("../../../elsewhere", "missing"):  # a ref that names no snapshot here is passed over
        set_ref(cache, "acme/tiny", bad)
        assert find_base_model("acme/tiny")[0] == new
    hf_snapshot(cache, "gpt2", "3333")  # ids without an organisation
    assert find_base_model("gpt2")[0].name == "3333"


def test_model_ids_never_escape_the_directories(no_hf_env, tmp_path):
    cache, models = tmp_path / "hub", tmp_path / "models"
    no_hf_env.setenv("HF_HUB_CACHE", str(cache))
    hf_snapshot(cache, "acme/tiny", "abc")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "config.json").write_text("{}")
    for bad in ("../outside", str(tmp_path / "outside"), "acme/../../outside", "acme/tiny/extra", ""):
        assert find_base_model(bad, models) is None
    assert CodecEnvironment(models_dir=None).resolve_model("../outside") is None


def test_the_models_directory_comes_before_the_cache(no_hf_env, tmp_path):
    cache, models = tmp_path / "hub", tmp_path / "models"
    no_hf_env.setenv("HF_HUB_CACHE", str(cache))
    snapshot = hf_snapshot(cache, "acme/tiny", "abc")
    assert CodecEnvironment(models_dir=None).find_model("acme/tiny") == (snapshot, "Hugging Face cache")
    assert CodecEnvironment(models_dir=models).find_model("acme/tiny") == (snapshot, "Hugging Face cache")
    (models / "acme--tiny").mkdir(parents=True)
    (models / "acme--tiny" / "config.json").write_text("{}")
    assert CodecEnvironment(models_dir=models).find_model("acme/tiny") == (
        models / "acme--tiny",
        "models directory",
    )


def test_a_push_finds_the_headless_base_in_the_cache_with_no_setting(bases, no_hf_env, tmp_path):
    """The published headless BERT sits in the Hugging Face cache; the adapter was trained on its
    sequence classifier; nothing is configured: the push distills and gates on held-out agreement."""
    from adapters.registry.client import LocalRegistry
    from adapters.registry.settings import Settings, reset_settings

    cache = tmp_path / "hub"
    snapshot = hf_snapshot(cache, "acme/tiny-bert", "f00d", source=bases["bert"])
    set_ref(cache, "acme/tiny-bert", "f00d")
    make_case("seq_cls_auto_mapping", bases, tmp_path / "adapter")
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = "acme/tiny-bert"
    config_path.write_text(json.dumps(config))
    no_hf_env.setenv("HF_HUB_CACHE", str(cache))
    no_hf_env.setenv("ADAPTERS_HOME", str(tmp_path / "home"))
    no_hf_env.setenv("ADAPTERS_CALIBRATION_TEXTS", str(texts_file(tmp_path)))
    no_hf_env.delenv("ADAPTERS_MODELS_DIR", raising=False)
    reset_settings()
    try:
        with LocalRegistry.from_settings(Settings()) as reg:
            version = reg.push(
                tmp_path / "adapter",
                "team/classifier",
                task="demo",
                codec="nola",
                params={"ratio": 2, "min_agreement": 0.0, "distill_steps": 4},
            ).version
    finally:
        reset_settings()
    assert version.status == "ready", version.error
    setup = version.fidelity["setup"]
    assert setup["base_model_found"] is True and setup["base_model_source"] == "Hugging Face cache"
    assert version.status == "ready" and version.codec == "nola"
    assert version.fidelity["gate"]["basis"] == "held-out agreement"
    # The 24 texts of the file, topped up from the packaged corpus: 2,000 held out, one per text.
    assert version.fidelity["held_out"]["predictions"] == DEFAULT_PREDICTIONS
    assert version.fidelity["calibration"]["texts"] == 4096
    assert snapshot.is_dir()
