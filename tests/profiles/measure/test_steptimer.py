"""Device step timing: the wrapper around vLLM's runner and the choice of the batch's step
(the CUDA side runs only on a GPU; here the host clock of CPU mode stands in)."""

from __future__ import annotations

from fineserve.profiles.measure import steptimer
from fineserve.profiles.measure.timing import device_prefill_step, device_probe_problem


class Output:
    def __init__(self, tokens: int) -> None:
        self.total_num_scheduled_tokens = tokens


class SplitRunner:
    """vLLM >= 0.11: execute_model returns None and sample_tokens finishes the step."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def execute_model(self, scheduler_output, intermediate_tensors=None):
        self.calls.append(f"exec {scheduler_output.total_num_scheduled_tokens}")
        return None if scheduler_output.total_num_scheduled_tokens else "empty"

    def sample_tokens(self, grammar_output):
        self.calls.append("sample")
        return "sampled"


class Worker:
    def __init__(self, runner) -> None:
        self.model_runner = runner


def test_steps_are_timed_only_while_on_and_taken_once():
    runner = SplitRunner()
    steptimer.attach(runner, cuda=False)
    worker = Worker(runner)
    runner.execute_model(Output(2048))
    runner.sample_tokens(None)
    assert steptimer.take(worker) == []  # off: passes through, times nothing
    assert steptimer.enable(worker, True)
    assert runner.execute_model(Output(2048)) is None
    assert runner.sample_tokens(None) == "sampled"
    assert runner.execute_model(Output(0)) == "empty"  # no forward: closed at once
    assert runner.execute_model(Output(512)) is None
    runner.sample_tokens(None)
    steps = steptimer.take(worker)
    assert [n for n, _ in steps] == [2048, 0, 512] and all(t >= 0 for _, t in steps)
    assert steptimer.take(worker) == []
    assert runner.calls.count("sample") == 3  # every call reached vLLM's own method


def test_a_runner_that_samples_inside_execute_model_is_timed_there():
    class OneCall:
        def execute_model(self, scheduler_output, intermediate_tensors=None):
            return "output"

    runner = OneCall()
    steptimer.attach(runner, cuda=False)
    worker = Worker(runner)
    steptimer.enable(worker, True)
    runner.execute_model(Output(128))
    assert [n for n, _ in steptimer.take(worker)] == [128]


def test_a_worker_without_a_runner_cannot_be_timed():
    assert not steptimer.install(Worker(None))
    assert not steptimer.enable(Worker(object()), True)
    assert steptimer.take(Worker(object())) == []


def test_the_batch_step_is_the_one_after_the_blocker():
    blocker = 2048
    assert device_prefill_step([(2048, 0.050), (512, 0.0135)], 512, blocker) == 0.0135
    assert device_prefill_step([(2048, 0.050), (0, 0.0001), (512, 0.0135)], 512, blocker) \
        == 0.0135  # an empty step is skipped
    assert device_prefill_step([(2048, 0.05), (513, 0.0135), (1, 0.004)], 512, blocker) \
        == 0.0135  # a blocker token scheduled ahead rides along, or trails in a step
    assert device_prefill_step([(128, 0.006)], 128) == 0.006  # no blocker: the batch alone


def test_a_batch_split_or_sharing_the_blockers_step_is_not_clean():
    blocker = 2048
    assert device_prefill_step([(2048, 0.05), (256, 0.01), (256, 0.01)], 512, blocker) is None
    assert device_prefill_step([(2048 + 256, 0.06), (256, 0.01)], 512, blocker) is None
    assert device_prefill_step([(1024, 0.03), (512, 0.0135)], 512, blocker) is None
    assert device_prefill_step([(2048, 0.05)], 512, blocker) is None
    assert device_prefill_step([], 128) is None
    assert device_prefill_step([(128, 0.0)], 128) is None


def test_a_probe_trusts_device_times_only_within_the_blockers_stamps():
    steps = [(2048, 0.0470), (128, 0.0061)]
    assert device_probe_problem(steps, 128, 2048, lead=0.0485) is None
    assert device_probe_problem(steps, 128, 2048, lead=None) is None  # no stamps: structure
    # events on another stream than the step's: they time the launches, a few ms
    launches = [(2048, 0.0021), (128, 0.0009)]
    assert "2.1 ms on the device and 48.5 ms" in device_probe_problem(launches, 128, 2048,
                                                                      0.0485)
    assert device_probe_problem([(2048, 0.070), (128, 0.006)], 128, 2048, 0.0485) is not None
    assert "not found" in device_probe_problem([(2048, 0.047)], 128, 2048, 0.0485)


def test_a_timer_that_cannot_install_says_why_in_the_probe_reason():
    """The probe's reason reaches the precision's log: it must carry the cause, not only
    "did not install" (review s6, M2)."""
    from fineserve.profiles.measure import engine as eng

    class Broken:
        def collective_rpc(self, fn, args=()):
            raise AttributeError("'GPUModelRunner' object has no attribute 'execute_model'")

    class TwoWorkers:
        def collective_rpc(self, fn, args=()):
            return [True, True]

    why = eng.probe_device_timing(Broken(), None, 512, 128)  # type: ignore[arg-type]
    assert why is not None and "did not install" in why and "execute_model" in why
    assert not eng.time_steps(Broken())
    why = eng.probe_device_timing(TwoWorkers(), None, 512, 128)  # type: ignore[arg-type]
    assert why is not None and "2 worker processes" in why


def test_each_timed_step_records_the_cuda_graph_mode_vllm_dispatched():
    """A prefill step without its graph is host-bound (flat in tokens): the timer keeps the
    dispatcher's choice per step so the log can say which steps ran without one."""

    class Mode:
        def __init__(self, name):
            self.name = name

    class Descriptor:
        def __init__(self, n):
            self.num_tokens = n

    class Dispatcher:
        def dispatch(self, num_tokens, uniform_decode=False):
            mode = "PIECEWISE" if num_tokens <= 512 else "NONE"
            return Mode(mode), Descriptor(num_tokens)

    class GraphRunner(SplitRunner):
        def __init__(self):
            super().__init__()
            self.cudagraph_dispatcher = Dispatcher()

        def execute_model(self, scheduler_output, intermediate_tensors=None):
            self.cudagraph_dispatcher.dispatch(scheduler_output.total_num_scheduled_tokens)
            return super().execute_model(scheduler_output, intermediate_tensors)

    runner = GraphRunner()
    steptimer.attach(runner, cuda=False)
    worker = Worker(runner)
    runner.execute_model(Output(128))  # off: not counted
    assert steptimer.modes(worker) == {}
    steptimer.enable(worker, True)
    for tokens in (2048, 128, 2048, 128):
        runner.execute_model(Output(tokens))
        runner.sample_tokens(None)
    assert steptimer.modes(worker) == {"2048:NONE@2048": 2, "128:PIECEWISE@128": 2}
    steptimer.enable(worker, True)  # switching on again starts a new count
    assert steptimer.modes(worker) == {}
    plain = SplitRunner()  # no dispatcher: the mode is unknown, the step still timed
    steptimer.attach(plain, cuda=False)
    steptimer.enable(Worker(plain), True)
    plain.execute_model(Output(64))
    plain.sample_tokens(None)
    assert steptimer.modes(Worker(plain)) == {"64:?": 1}
