r"""Hand-written C++ for the cpp_standalone fast path (``Chunk(fast=True)``, ``build(fast=True)``).

Profiled on ``spiking_mnist`` (784-500-10, 1125 steps of 0.2 ms per sample), Brian2's generated
code spent its time on the input layer's once-per-sample work (about half), the thresholders,
the spike queues of ``W_2`` and the network loop. Each piece here does the same arithmetic in
the same order (``benchmarks/brian2_sample.py --code both`` checks that the weights come out
bit for bit the same; ``tests/test_brian2.py`` compares the two to 1e-12):

- :func:`input_step` (``input = "current"``): the learning rule's update of ``W_1`` and the
  drive ``I_x = W_1 x`` of the next sample, one C++ function called once per sample. Brian2
  loops over all 392,000 synapses, looks up each synapse's indices and adds into the
  postsynaptic unit one synapse at a time (a chain of dependent additions). Here ``W_1`` is
  stored input-major (``dense_pairs(..., pre_major=True)``: synapse ``(c n_0 + j) n_1 + i``)
  and only the rows of non-zero inputs are visited, whole and vectorised::

      for every input j with x_prev_j != 0, every unit i:  w_ji -= eta dg(x_prev_j, post_i)
      I_x_i = sum over j with x_j != 0 (ascending) of w_ji x_j

  A synapse with ``x_prev_j = 0`` has ``dg = -0`` (every term of the rule's ``dg`` under a
  constant input current is a multiple of ``x_prev_pre``: checked symbolically) and a zero
  input adds ``+-0`` to the sum, so skipping them changes no bit. ``dg`` is the expression
  Brian2's own optimiser renders for the synaptic code. The estimate ``g`` (read only after
  the run) is not touched per sample: the inputs and accumulators of up to ``hold`` samples
  are kept and their terms added row by row, in sample order, at the last close of the run.
- :func:`spike_step` (a dense coupling that does not learn at spikes): a step's spikes in
  both directions, as Brian2's spike queues deliver them (``s_post += w / (r_max tau_syn)``
  per presynaptic spike, unit by unit), without the queues. :func:`input_spikes` does the
  same for ``W_1`` under Poisson input (one direction: the input is clamped), stored
  input-major: each input spike adds one contiguous row.
- :func:`frozen_input` (``input = "poisson_frozen"``): the input layer's spikes of a step,
  listed from the frozen table without looking at every input neuron (the thresholder of
  784 neurons, each reading a 2-D ``TimedArray``, cost a third of a ``spiking_mnist_bio``
  sample). A neuron fires at row ``k`` of the table when ``u[k, j] < x_j r_max dt``; at each
  sample start the rows of each input's spikes are found among its few rows with ``u``
  below ``r_max dt`` (the largest threshold of an input in [0, 1]; a larger input scans its
  whole column) and sorted by row, so that each step copies its row's list, neurons
  ascending, into the spike space. :class:`ListedCodeObject` is the thresholder that leaves
  that list in place.
- :class:`CodeObject` (``_THRESHOLD``): a thresholder without a branch per neuron.
- :class:`Device` (``brian2.set_device(DEVICE)``): code objects of :class:`CodeObject`, and a
  network loop that reads the process CPU clock (a system call) once per run instead of once
  per step.

The functions are Brian2 :class:`~brian2.Function` s called by a ``run_regularly`` whose only
statement assigns a shared variable; they read and write the groups' arrays through the
global names the standalone project gives them.
"""

from __future__ import annotations

import brian2 as b2
import numpy as np
import sympy
from brian2.codegen.optimisation import Simplifier
from brian2.codegen.templates import Templater
from brian2.core.variables import Constant, Variable
from brian2.devices.cpp_standalone.codeobject import CPPStandaloneCodeObject
from brian2.devices.cpp_standalone.device import CPPStandaloneDevice
from brian2.devices.device import all_devices
from brian2.parsing.rendering import CPPNodeRenderer
from brian2.parsing.sympytools import str_to_sympy
from brian2.utils.stringtools import get_identifiers
from jinja2 import ChoiceLoader, DictLoader

__all__ = [
    "input_step",
    "spike_step",
    "input_spikes",
    "frozen_input",
    "CodeObject",
    "ListedCodeObject",
    "Device",
    "DEVICE",
]

# Brian2's thresholder appends a neuron to the spike list under an `if`: with IF neurons firing
# every few steps at irregular intervals the branch is mispredicted often, and the thresholder of
# 500 neurons cost more than their state update. This one evaluates the condition of every neuron
# into a byte array (no branch; vectorised when the condition is), packs the bytes into one bit
# per neuron, 64 neurons to a word (multiplying 8 bytes of 0 or 1 by 0x0102040810204080 gathers
# their low bits in the top byte), and lists the set bits of each word in ascending order: the
# same spike list.
_THRESHOLD = """{# USES_VARIABLES { N } #}
{% extends 'common_group.cpp' %}
{% block maincode %}
    //// MAIN CODE (spikeep.brian2.kernels: thresholder by 64-neuron words) ////////////
    const int _vectorisation_idx = -1;
    {{scalar_code|autoindent}}
    {% set _eventspace = get_array_name(eventspace_variable) %}
    static unsigned char _flags[N + 64];
    for(size_t _idx=0; _idx<N; _idx++)
    {
        const size_t _vectorisation_idx = _idx;
        {{vector_code|autoindent}}
        _flags[_idx] = _cond ? 1 : 0;
    }
    for(size_t _idx=N; _idx<N + 64; _idx++)
        _flags[_idx] = 0;
    long _count = 0;
    for(size_t _base=0; _base<N; _base+=64)
    {
        uint64_t _word = 0;
        for(int _byte=0; _byte<8; _byte++)
        {
            uint64_t _eight;
            __builtin_memcpy(&_eight, &_flags[_base + 8 * _byte], 8);
            _word |= ((_eight * 0x0102040810204080ULL) >> 56) << (8 * _byte);
        }
        while(_word)
        {
            const size_t _idx = _base + __builtin_ctzll(_word);
            _word &= _word - 1;
            {% if _uses_refractory %}
            {{not_refractory}}[_idx] = false;
            {{lastspike}}[_idx] = {{t}};
            {% endif %}
            {{_eventspace}}[_count++] = _idx;
        }
    }
    {{_eventspace}}[N] = _count;
{% endblock %}

{% block after_code %}
{% set _eventspace = get_array_name(eventspace_variable) %}
{{_eventspace}}[N] = 0;
{% endblock %}
"""

# Brian2's network loop reads the process CPU clock after every time step (a system call,
# about 10% of a sample here) to stop a run that exceeds a maximum run time; without one (and
# without OpenMP) the elapsed time is only reported at the end, so it is read once, after the loop.
_PER_STEP_CLOCK = """        clock = next_clocks();

        current = std::clock();
        elapsed_realtime = (double)(current - start)/(1 * CLOCKS_PER_SEC);
"""
_AFTER_LOOP = """    Network::_globally_running = false;
"""


# The thresholder of a group whose spikes a kernel listed earlier in the step (frozen_input): the
# spike space is left as the kernel wrote it; after a run its count is cleared, as Brian2's does.
_LISTED_THRESHOLD = """{# USES_VARIABLES { N } #}
{% extends 'common_group.cpp' %}
{% block maincode %}
    //// MAIN CODE (spikeep.brian2.kernels: spikes listed by a kernel earlier in the step) ////
{% endblock %}

{% block after_code %}
{% set _eventspace = get_array_name(eventspace_variable) %}
{{_eventspace}}[N] = 0;
{% endblock %}
"""


def _templater(threshold: str) -> Templater:
    base = CPPStandaloneCodeObject.templater
    out = Templater(base.package_names, base.extension, base.env_globals, base.templates_dir)
    out.env.loader = ChoiceLoader([DictLoader({"threshold.cpp": threshold}), out.env.loader])
    return out


class CodeObject(CPPStandaloneCodeObject):
    """Brian2's C++ standalone code object with spikeep's thresholder (``_THRESHOLD``); every
    other template is Brian2's. Give it to a group as ``codeobj_class``."""

    templater = _templater(_THRESHOLD)


class ListedCodeObject(CPPStandaloneCodeObject):
    """Brian2's C++ standalone code object whose thresholder evaluates nothing: a kernel
    (:func:`frozen_input`) has written the step's spikes into the group's spike space before
    it. Give it to the input group as ``codeobj_class``; every other template is Brian2's."""

    templater = _templater(_LISTED_THRESHOLD)


class Device(CPPStandaloneDevice):
    """Brian2's cpp_standalone device whose code objects are :class:`CodeObject` s and whose
    network loop reads the CPU clock once per run instead of once per step (``_PER_STEP_CLOCK``;
    unchanged when a maximum run time or OpenMP needs it). Registered as :data:`DEVICE`."""

    def code_object_class(self, codeobj_class=None, fallback_pref=None):
        return codeobj_class or CodeObject

    def generate_network_source(self, writer, compiler):
        super().generate_network_source(_Patching(writer), compiler)


class _Patching:
    """A writer that moves the per-step clock read of ``network.cpp`` after the loop."""

    def __init__(self, writer):
        self.writer = writer

    def write(self, filename, contents):
        cpp = contents.cpp_file
        if (
            filename == "network.*"
            and cpp.count(_PER_STEP_CLOCK) == 1
            and cpp.count(_AFTER_LOOP) == 1
            and "omp_get_wtime" not in cpp
            and "did_break_early = true" not in cpp  # no maximum run time to check per step
        ):
            clock = _PER_STEP_CLOCK.split("\n", 2)[2].replace("        ", "    ")
            cpp = cpp.replace(_PER_STEP_CLOCK, "        clock = next_clocks();\n")
            cpp = cpp.replace(_AFTER_LOOP, clock + _AFTER_LOOP)
        self.writer.write("network.cpp", cpp)
        self.writer.write("network.h", contents.h_file)


#: The name of :class:`Device` in Brian2's device registry (``brian2.set_device(DEVICE)``).
DEVICE = "spikeep_standalone"
all_devices.setdefault(DEVICE, Device())


def _render(dg: str, pre: str, post: set[str], ns: dict) -> tuple[list[str], str]:
    """``dg`` as Brian2 renders a synaptic statement: (loop-invariant lines, C++ expression)."""
    names = get_identifiers(dg)
    variables = {}
    for name in names:
        if name == pre or name in post:
            variables[name] = Variable(name=name, dtype=np.float64, scalar=False)
        elif name in ns:
            variables[name] = Constant(name, float(ns[name]))
    simplifier = Simplifier(variables, [])
    expr = simplifier.render_expr(dg)
    render = CPPNodeRenderer().render_expr
    consts = [f"const double {n} = {float(ns[n])!r};" for n in names if n in ns]
    lio = [f"const double {n} = {render(e)};" for e, n in simplifier.loop_invariants.items()]
    return consts + lio, render(expr)


def _cpp_function(name: str, code: str, args: int, namespace: dict | None = None) -> b2.Function:
    """A Brian2 function of ``args`` dimensionless arguments that exists only as the C++ ``code``
    (named ``name``, with the arrays of ``namespace``): the runtime targets never lower it."""

    def python(*_):  # pragma: no cover - the runtime targets never lower this path
        raise NotImplementedError(f"{name} exists only in cpp_standalone")

    fn = b2.Function(python, arg_units=[1] * args, return_unit=1, stateless=False)
    fn.implementations.add_implementation("cpp", code, name=name, namespace=namespace)
    return fn


def _array(group, var: str) -> str:
    """The C++ name of ``group`` 's array ``var`` in the standalone project."""
    return "brian::" + b2.get_device().get_array_name(group.variables[var], access_data=False)


def _rows(spikes: str, n_from: int, n_to: int, s_to: str, expr: str, copies: int) -> str:
    """The C++ loop that delivers each spike of the list ``spikes`` (units of ``n_from`` per
    copy, ``copies`` copies) as one contiguous row of ``W`` (``n_to`` weights from
    ``W + spike * n_to``): ``s_to[c n_to + t] += expr`` (over ``w``) for ``t`` ascending,
    spikes in list order."""
    return f"""for (int k = 0; k < {spikes}[{copies * n_from}]; k++)
    {{
        const int c = {spikes}[k] / {n_from};
        const double* const W_k = W + (size_t){spikes}[k] * {n_to};
        double* const s_c = {s_to} + c * {n_to};
        for (int t = 0; t < {n_to}; t++)
        {{
            const double w = W_k[t];
            s_c[t] += {expr};
        }}
    }}"""


def spike_step(jump: str, syn, pre, post, copies: int, name: str) -> b2.Function:
    """The C++ function ``name(0)`` that delivers one time step's spikes through the dense
    coupling ``syn`` in both directions (module docstring); returns 0.

    A spike of presynaptic unit ``j`` adds ``jump`` to ``s`` of every postsynaptic unit ``i``
    (``i`` ascending), a spike of ``i`` adds it to ``s`` of every ``j``; spikes in the order of
    the spike lists. This is the order in which Brian2's spike queue delivers the events of
    ``on_pre = "s_post += jump"`` and ``on_post = "s_pre += jump"`` without delays, and ``jump``
    is rendered as Brian2 renders it: the same sums.

    Args:
        jump: the weight's contribution, over ``w`` and numeric constants of ``syn`` 's
            namespace (``w / (r_max * tau_syn)``).
        syn: the ``Synapses`` holding ``w``, created by ``dense_pairs`` (post-major).
        pre, post: the two layers (``s``, ``_spikespace``).
        copies: copies of the network side by side.
        name: the C++ name (unique in the project).
    """
    consts, expr = _render(jump, "w", set(), syn.namespace)
    n_pre, n_post = len(pre) // copies, len(post) // copies

    indent = "\n    "
    code = f"""
static double {name}(const double)
{{
    // generated by spikeep.brian2.kernels.spike_step: a step's spikes through W in both ways
    {indent.join(consts)}
    const double* const W = &{_array(syn, "w")}[0];
    const int32_t* const spikes_pre = {_array(pre, "_spikespace")};
    const int32_t* const spikes_post = {_array(post, "_spikespace")};
    double* const s_pre = {_array(pre, "s")};
    double* const s_post = {_array(post, "s")};
    for (int k = 0; k < spikes_pre[{copies * n_pre}]; k++)
    {{
        const int c = spikes_pre[k] / {n_pre}, j = spikes_pre[k] % {n_pre};
        for (int i = 0; i < {n_post}; i++)
        {{
            const double w = W[(size_t)(c * {n_post} + i) * {n_pre} + j];
            s_post[c * {n_post} + i] += {expr};
        }}
    }}
    {_rows("spikes_post", n_post, n_pre, "s_pre", expr, copies)}
    return 0;
}}
"""

    return _cpp_function(name, code, args=1)


def input_spikes(jump: str, syn, pre, post, copies: int, name: str) -> b2.Function:
    """The C++ function ``name(0)`` that delivers one time step's input spikes through ``W_1``
    (``syn``, stored input-major); returns 0.

    A spike of input ``j`` adds ``jump`` to ``s`` of every unit ``i`` of its copy, spikes in the
    order of the spike list: the sums of Brian2's spike queue for ``on_pre = "s_post += jump"``
    (:func:`spike_step`), each spike reading one contiguous row of ``W^T`` (vectorised). The
    input is clamped: the units' spikes deliver nothing to it. (Holding a block of units' ``s``
    in registers over all of a step's spikes was no faster: the rows' loads set the time.)

    Args:
        jump: the weight's contribution, over ``w`` and numeric constants of ``syn`` 's
            namespace (``w / (r_max * tau_syn)``).
        syn: the ``Synapses`` holding ``w``, created by ``dense_pairs(..., pre_major=True)``
            (synapse ``(c n_0 + j) n_1 + i``).
        pre, post: the input group (``_spikespace``) and layer 1 (``s``).
        copies: copies of the network side by side.
        name: the C++ name (unique in the project).
    """
    consts, expr = _render(jump, "w", set(), syn.namespace)
    n_pre, n_post = len(pre) // copies, len(post) // copies

    indent = "\n    "
    code = f"""
static double {name}(const double)
{{
    // generated by spikeep.brian2.kernels.input_spikes: a step's input spikes through W_1
    {indent.join(consts)}
    const double* const W = &{_array(syn, "w")}[0];
    const int32_t* const spikes = {_array(pre, "_spikespace")};
    double* const s_post = {_array(post, "s")};
    {_rows("spikes", n_pre, n_post, "s_post", expr, copies)}
    return 0;
}}
"""

    return _cpp_function(name, code, args=1)


def frozen_input(
    u: np.ndarray, bound: float, group, copies: int, steps: int, name: str
) -> b2.Function:
    """The C++ function ``name(row, rdt)`` that writes the input spikes of a step into the
    spike space of ``group`` (``input = "poisson_frozen"``, module docstring); returns their
    number.

    Neuron ``c n + j`` (copy ``c``, input ``j``) fires when ``u[row, j] < rdt x``, with ``x``
    the group's variable, ``row`` the table's row of the step and ``rdt = r_max dt``: the
    caller passes ``row_t(t % t_replay)`` (a ``TimedArray`` of the row numbers, read as Brian2
    reads ``u_t``) and ``r_max * dt``, so that the arithmetic is the thresholder's
    ``u_t(t % t_replay, i % n_input) < x * r_max * dt``. At every step that starts a sample
    (the step clock's ``timestep`` a multiple of ``steps``, when the sample's ``x`` was just
    set) the sample's spikes are sorted by row; each step then copies its row's list.

    Args:
        u: the frozen table (:func:`spikeep.brian2.inputs.frozen_table`), shape ``(rows, n)``.
        bound: inputs fire only below ``rdt x <= bound`` (``r_max dt``: inputs in [0, 1]); the
            entries of ``u`` below it are kept, by input (the rest of ``u`` is not needed).
        group: the input group (``x``, ``_spikespace``; ``copies n`` neurons).
        copies: copies of the network side by side.
        steps: time steps per sample.
        name: the C++ name (unique in the project).

    Inputs above 1 (``rdt x > bound``) would miss spikes: :func:`spikeep.brian2.lowering.build`
    and :meth:`spikeep.brian2.standalone.Chunk.run` refuse them under Poisson input.
    """
    rows, n = u.shape
    if len(group) != copies * n:
        raise ValueError(f"the table has {n} inputs; the group has {len(group)} neurons")
    below = u.T < bound  # (n, rows): the candidates of each input, rows ascending
    start = np.concatenate([[0], np.cumsum(below.sum(1))]).astype(np.int32)
    row = np.nonzero(below)[1].astype(np.int32)
    value = u.T[below].astype(np.float64)

    timestep = _array(group.clock, "timestep")
    code = f"""
static double {name}(const double row_of_step, const double rdt)
{{
    // generated by spikeep.brian2.kernels.frozen_input: the input spikes of a step, listed
    const int32_t* const start = _namespace{name}_start;  // input j's candidates: start[j]..
    const int32_t* const row = _namespace{name}_row;      // their rows (ascending)
    const double* const value = _namespace{name}_value;   // and their u
    const double* const x = {_array(group, "x")};
    int32_t* const spikes = {_array(group, "_spikespace")};
    // the sample's spikes by row: row k's neurons are listed[first[k]] .. listed[first[k + 1]]
    static int32_t first[{rows + 1}];
    static std::vector<int32_t> listed;
    static int64_t listed_at = -1;
    const int64_t step = {timestep}[0];
    if (listed_at < 0 || step % {steps} == 0)
    {{
        for (int k = 0; k <= {rows}; k++)
            first[k] = 0;
        for (int pass = 0; pass < 2; pass++)  // count per row, then fill (neurons ascending)
        {{
            for (int c = 0; c < {copies}; c++)
                for (int j = 0; j < {n}; j++)
                {{
                    const double p = rdt * x[c * {n} + j];
                    if (!(p > 0))  // u >= 0: never below
                        continue;
                    for (int m = start[j]; m < start[j + 1]; m++)
                        if (value[m] < p)
                        {{
                            if (pass == 0)
                                first[row[m] + 1]++;
                            else
                                listed[first[row[m]]++] = c * {n} + j;
                        }}
                }}
            if (pass == 0)
            {{
                for (int k = 0; k < {rows}; k++)
                    first[k + 1] += first[k];
                listed.resize(first[{rows}]);
            }}
        }}
        for (int k = {rows}; k > 0; k--)  // the fill advanced each row's start to its end
            first[k] = first[k - 1];
        first[0] = 0;
        listed_at = step;
    }}
    const int k = (int)row_of_step;
    int count = 0;
    for (int m = first[k]; m < first[k + 1]; m++)
        spikes[count++] = listed[m];
    spikes[{copies * n}] = count;
    return count;
}}
"""

    namespace = {f"{name}_start": start, f"{name}_row": row, f"{name}_value": value}
    return _cpp_function(name, code, args=2, namespace=namespace)


def input_step(
    dg: str, syn, pre, post, copies: int, samples: int, name: str, hold: int = 128
) -> b2.Function:
    """The C++ function ``name(eta)`` that applies ``dg`` to ``syn`` (``W_1``) and sets
    ``post.I_x = W_1 x`` (module docstring); returns 0.

    Args:
        dg: the rule's per-sample ``dg`` of a constant-current input, in Brian2's expression
            language, over ``x_prev_pre``, postsynaptic accumulators ``<name>_post`` and
            numeric constants of the synapses' namespace.
        syn: the ``Synapses`` holding ``w`` and ``g``, created in the order of
            ``dense_pairs(..., pre_major=True)`` (synapse ``(c n_0 + j) n_1 + i``).
        pre, post: the input group (``x``, ``x_prev``) and layer 1 (``I_x``, accumulators).
        copies: copies of the network side by side.
        samples: samples lowered: the function is called ``samples + 1`` times (at every
            sample start and once to close the last), and the last call completes ``g``.
        name: the C++ name (unique in the project).
        hold: samples whose ``g`` terms are held before they are added (module docstring).
    """
    ns = syn.namespace
    post_vars = sorted(v for v in get_identifiers(dg) if v.endswith("_post"))
    symbolic = str_to_sympy(dg)
    zero = symbolic.subs({s: 0 for s in symbolic.free_symbols if s.name == "x_prev_pre"})
    if sympy.simplify(zero) != 0:
        raise ValueError(f"the input rule {dg!r} does not vanish with x_prev_pre = 0")
    learns = sympy.simplify(symbolic) != 0  # a free schedule's dg is 0: no update at all
    consts, expr = _render(dg, "x_prev_pre", set(post_vars), ns) if learns else ([], "0")
    n_pre, n_post = len(pre) // copies, len(post) // copies
    n_var = len(post_vars)

    def dynamic(var: str) -> str:
        return f"&{_array(syn, var)}[0]"

    now = "\n".join(
        f"    const double* const {v}_now = {_array(post, v[: -len('_post')])};" for v in post_vars
    )
    load_now = "\n".join(
        f"                const double {v} = {v}_now[c * {n_post} + i];" for v in post_vars
    )
    load_held = "\n".join(
        f"                        const double {v} = post_c[{k * copies * n_post} + i];"
        for k, v in enumerate(post_vars)
    )
    keep = "\n".join(
        f"        held_post.insert(held_post.end(), {v}_now, {v}_now + {copies * n_post});"
        for v in post_vars
    )
    indent = "\n    "
    code = f"""
static double {name}(const double eta)
{{
    // generated by spikeep.brian2.kernels.input_step: the rule's update of W_1 and I_x = W_1 x
    {indent.join(consts)}
    double* const w = {dynamic("w")};
    double* const g = {dynamic("g")};
    const double* const x = {_array(pre, "x")};
    const double* const x_prev = {_array(pre, "x_prev")};
    double* const I_x = {_array(post, "I_x")};
{now}
    // the samples whose g terms wait: their inputs x_prev and postsynaptic accumulators
    static std::vector<double> held_x, held_post;
    static int calls = 0, held = 0;
    // dg of one input for every unit: stored, then used (never folded into the use, which
    // -ffast-math would round differently from Brian2's synaptic code); w -= eta dg and
    // I_x += w x are single roundings (fused multiply-adds), as g++ -O3 -ffast-math compiles
    // Brian2's code for them on a machine with FMA
    static double dg_i[{n_post}];
    if ({int(learns)})
    {{
        held_x.insert(held_x.end(), x_prev, x_prev + {copies * n_pre});
{keep}
        held++;
    }}
    for (int c = 0; c < {copies}; c++)
    {{
        for (int j = 0; j < {n_pre} && {int(learns)}; j++)
        {{
            const double x_prev_pre = x_prev[c * {n_pre} + j];
            if (x_prev_pre == 0)
                continue;
            double* const w_j = w + (size_t)(c * {n_pre} + j) * {n_post};
            for (int i = 0; i < {n_post}; i++)
            {{
{load_now}
                dg_i[i] = {expr};
            }}
            for (int i = 0; i < {n_post}; i++)
                w_j[i] = __builtin_fma(-eta, dg_i[i], w_j[i]);
        }}
        double* const I_c = I_x + c * {n_post};
        for (int i = 0; i < {n_post}; i++)
            I_c[i] = 0;
        for (int j = 0; j < {n_pre}; j++)
        {{
            const double x_pre = x[c * {n_pre} + j];
            if (x_pre == 0)
                continue;
            const double* const w_j = w + (size_t)(c * {n_pre} + j) * {n_post};
            for (int i = 0; i < {n_post}; i++)
                I_c[i] = __builtin_fma(w_j[i], x_pre, I_c[i]);
        }}
    }}
    calls++;
    if ({int(learns)} && (calls == {samples + 1} || held == {hold}))
    {{
        // g += dg of every held sample, in sample order: each row of g is visited once
        for (int c = 0; c < {copies}; c++)
            for (int j = 0; j < {n_pre}; j++)
            {{
                double* const g_j = g + (size_t)(c * {n_pre} + j) * {n_post};
                for (int h = 0; h < held; h++)
                {{
                    const size_t at = (size_t)h * {copies * n_pre} + c * {n_pre} + j;
                    const double x_prev_pre = held_x[at];
                    if (x_prev_pre == 0)
                        continue;
                    const size_t post_at = (size_t)h * {n_var * copies * n_post} + c * {n_post};
                    const double* const post_c = &held_post[post_at];
                    for (int i = 0; i < {n_post}; i++)
                    {{
{load_held}
                        dg_i[i] = {expr};
                    }}
                    for (int i = 0; i < {n_post}; i++)
                        g_j[i] += dg_i[i];
                }}
            }}
        held_x.clear();
        held_post.clear();
        held = 0;
    }}
    return 0;
}}
"""

    return _cpp_function(name, code, args=1)
