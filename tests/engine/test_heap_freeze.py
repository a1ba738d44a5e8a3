"""The engine freezes its start-up heap out of the garbage collector's reach and thaws it on
shutdown (``vllm_core.engine.startup.freeze_heap``)."""

import gc

import pytest

from vllm_core.engine.startup import freeze_heap, thaw_heap


class _Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> str:
    from vllm_core.model_executor.testing import random_hf_causal_lm, write_wordlevel_tokenizer

    path = str(tmp_path_factory.mktemp("heap_freeze_llama"))
    random_hf_causal_lm("llama", dict(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
        tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None),
        seed=0).save_pretrained(path)
    write_wordlevel_tokenizer(path, 128)
    return path


@pytest.fixture
def tiny_llm_factory(tiny_folder):
    from vllm_core import LLM

    return lambda: LLM(tiny_folder, dtype="float32", max_model_len=64,
                       num_gpu_blocks_override=16, max_num_seqs=2, enforce_eager=True)


@pytest.fixture(autouse=True)
def _thawed():
    thaw_heap()
    yield
    thaw_heap()


def test_freeze_keeps_cycles_from_the_collector_and_thaw_frees_them():
    import weakref

    obj = _Cycle()
    ref = weakref.ref(obj)
    freeze_heap()
    assert gc.get_freeze_count() > 0
    del obj
    gc.collect()
    assert ref() is not None            # frozen: a full collection does not walk it
    thaw_heap()
    assert gc.get_freeze_count() == 0 and ref() is None


def test_a_second_freeze_first_frees_what_the_first_froze():
    import weakref

    obj = _Cycle()
    ref = weakref.ref(obj)
    freeze_heap()
    del obj
    freeze_heap()                       # unfreeze, collect, freeze again
    assert ref() is None and gc.get_freeze_count() > 0


def test_engine_freezes_after_start_up_and_thaws_on_shutdown(tiny_llm_factory):
    llm = tiny_llm_factory()
    assert "heap freeze" in llm.llm_engine.startup_phases
    assert gc.get_freeze_count() > 0
    out = llm.generate([{"prompt_token_ids": [1, 2, 3]}], use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) > 0
    llm.llm_engine.shutdown()
    assert gc.get_freeze_count() == 0


def test_freeze_can_be_turned_off(tiny_llm_factory, monkeypatch):
    monkeypatch.setenv("VLLM_FREEZE_GC_HEAP", "0")
    llm = tiny_llm_factory()
    assert "heap freeze" not in llm.llm_engine.startup_phases
    assert gc.get_freeze_count() == 0
    llm.llm_engine.shutdown()


class _Ring:
    """Messages for ``worker_process._serve`` as the shared-memory ring hands them out."""

    def __init__(self, *messages):
        import pickle

        self.queue = [pickle.dumps(m) for m in messages]

    def poll(self) -> bool:
        return bool(self.queue)

    def read(self, check=None) -> bytes:
        return self.queue.pop(0)


class _Reply:
    def __init__(self):
        self.sent = []

    def send(self, msg) -> None:
        self.sent.append(msg)


class _Worker:
    rank = 0

    def compile_or_warm_up_model(self) -> str:
        assert gc.get_freeze_count() == 0          # frozen after start-up, not before
        return "warm"


@pytest.mark.parametrize("switch", ["1", "0"])
def test_worker_process_freezes_once_its_start_up_is_over(switch, monkeypatch):
    from vllm_core.worker.worker_process import _serve

    monkeypatch.setenv("VLLM_FREEZE_GC_HEAP", switch)
    reply = _Reply()
    _serve(_Worker(), _Ring((1, "compile_or_warm_up_model", ()), (2, "shutdown", ())), reply,
           True, lambda: None)
    assert reply.sent == [(1, "ok", "warm"), (2, "ok", None)]
    assert (gc.get_freeze_count() > 0) == (switch == "1")
