r"""Local learning rules: Brian2 code that estimates ``+dL/dtheta`` inside the simulation.

Every rule accumulates, per synapse, ``g += dg`` (the estimate, summed over samples) and moves the
weight ``w -= eta dg`` (``eta = 0``: measure only); per neuron, ``gb`` and ``b`` likewise. The
schedule (:mod:`spikeep.brian2.schedules`) supplies the gate ``G(t)`` and the rate accumulators;
``r`` is each neuron's spike trace (``tau_trace dr/dt = -r``, ``+1/(r_max tau_trace)`` per spike, so
``r ~ rho(s)``), and ``r_max`` the spec's ``rate_max``.

Every neuron, on each spike, adds ``G(t) / r_max`` to ``gate_run`` and ``w_k(t) / r_max`` to each
rate accumulator; at the start of every sample (``run_regularly``) it closes the last sample,
``gate = gate_run`` (phased: ``sum_k c_k rho_k``), ``rho_k = rho_k_run``, and applies the bias rule
``dgb = -gate`` (``dF/db_i = -r_i``).

``endpoint`` (the EP rule from rate traces, once per sample, at the sample's start)::

    phased:       dg = -sum_k c_k rho_k_pre rho_k_post           (= sum_k c_k dF/dW(r_k))
    oscillating:  dg = -(m_pre q_post + q_pre m_post) / |beta|

(``m`` is a neuron's mean rate over the demodulated periods and ``q`` its first cosine coefficient,
``r(t) ~ m + q cos(omega t) + ...``, so ``m_i q_j + q_i m_j`` is the first cosine coefficient of
``r_i r_j`` up to O(beta^3)).

``stdp`` (event-driven: the weight changes at every spike)::

    on a presynaptic spike:   dg = -G(t) r_post / (2 r_max)
    on a postsynaptic spike:  dg = -G(t) r_pre  / (2 r_max)

Summed over a window, the presynaptic spikes sample ``r_max rho_pre(t)``, so
``E[sum dg] = -int G rho_pre rho_post dt``: the contrastive EP update when phased (``G < 0`` in the
free window, ``> 0`` in the nudged one), and each synapse's own lock-in demodulation of its
coincidences against ``cos(omega t)`` when oscillating. A constant input current ``x`` has no
spikes; its synapses take ``dg = -x_pre gate_post`` once per sample, which is the sum of the
postsynaptic terms exactly.

With ``[spiking] stdp_trace = "count"`` (phased schedules) a spike is paired instead with the
other neuron's count of spikes so far in the current learning window, ``nw`` (zero wherever the
gate is, one per spike inside a learning window, no decay), weighted by the window's ``1/T_k``::

    on a presynaptic spike:   dg = -G(t) nw_post / (r_max^2 T_k)
    on a postsynaptic spike:  dg = -G(t) nw_pre  / (r_max^2 T_k)

Each pair of spikes of a window is counted once, by the later spike, whatever their lag, so the
window's sum is ``-c_k N_pre N_post / (r_max T_k)^2 = -c_k rho_pre rho_post`` from the counts:
the endpoint rule's estimate to float rounding, formed spike by spike. A pair within one time
step is counted by the postsynaptic spike: the synapses' postsynaptic pathway runs after the
neurons' resets (where ``nw_pre`` already holds the step's presynaptic spike), the presynaptic
one before them. At up to ``r_max`` neurons fire in lockstep, so such pairs are common. The
running trace ``r`` weighs a pair by its lag instead (``docs/spiking.md``, "STDP-like synapses on
MNIST"). When the weight changes reach transmission is the spec's ``stdp_expressed``
(:func:`spikeep.brian2.lowering.build`).
"""

from __future__ import annotations

from .schedules import Schedule

__all__ = ["RULES", "Rule"]

RULES = ("endpoint", "stdp")


class Rule:
    """The code of rule ``name`` (one of :data:`RULES`) under ``schedule``."""

    def __init__(self, name: str, schedule: Schedule, trace: str = "running"):
        if name not in RULES:
            raise ValueError(f"unknown learning rule {name!r}; expected one of {list(RULES)}")
        self.name, self.schedule = name, schedule
        #: the stdp rule pairs spikes with window counts ``nw`` (``stdp_trace = "count"``)
        self.counts = name == "stdp" and trace == "count"
        if self.counts and schedule.oscillating:
            raise ValueError(
                "spiking.stdp_trace: 'count' needs a phased schedule (the phase-free rule "
                "demodulates over whole periods); set 'running'"
            )

    # -- expressions ---------------------------------------------------------------------------

    @property
    def gate(self) -> str:
        """``G(t)``."""
        if self.schedule.oscillating:
            return "2 * cos(omega * t) * demod_t(t) / beta_abs"
        return "gate_t(t)"

    def weights(self) -> dict[str, str]:
        """Accumulator name -> the weight ``w_k(t)`` each spike adds (times ``1/r_max``)."""
        if self.schedule.oscillating:
            return {"m": "demod_t(t)", "q": "2 * cos(omega * t) * demod_t(t)"}
        return {f"rho{k}": f"win{k}_t(t)" for k in range(len(self.schedule.phases))}

    # -- neurons ---------------------------------------------------------------------------------

    def neuron_variables(self) -> str:
        """Equation lines of a neuron's accumulators and bias rule."""
        lines = ["gate : 1", "gate_run : 1", "gb : 1", "eta_b : 1 (shared)"]
        if self.counts:
            lines.append("nw : 1")
        for name in self.weights():
            lines += [f"{name} : 1", f"{name}_run : 1"]
        return "\n".join(lines)

    def on_spike(self) -> str:
        """Code a neuron runs at each of its spikes."""
        lines = [f"gate_run += {self.gate} / r_max"]
        if self.counts:  # only a learning window's spikes count
            lines.append(f"nw += int({self.gate} * second != 0)")
        lines += [f"{name}_run += {w} / r_max" for name, w in self.weights().items()]
        return "\n".join(lines)

    def per_step(self) -> str | None:
        """Code every neuron runs at the start of each step, or ``None``: the window count is
        emptied wherever the gate is zero."""
        return f"nw = nw * int({self.gate} * second != 0)" if self.counts else None

    def close_sample(self) -> str:
        """Code every neuron runs at the start of each sample (closing the previous one)."""
        lines = ["gate = gate_run", "gate_run = 0", "gb += -gate", "b -= eta_b * (-gate)"]
        for name in self.weights():
            lines += [f"{name} = {name}_run", f"{name}_run = 0"]
        return "\n".join(lines)

    # -- synapses --------------------------------------------------------------------------------

    def _endpoint(self, pre: dict[str, str] | None = None) -> str:
        """``dg`` of the endpoint rule; ``pre`` replaces presynaptic accumulators (currents)."""
        p = {name: f"{name}_pre" for name in self.weights()}
        p.update(pre or {})
        if self.schedule.oscillating:
            return f"-({p['m']} * q_post + {p['q']} * m_post) / beta_abs"
        terms = [
            f"({phase.c!r}) * {p[f'rho{k}']} * rho{k}_post"
            for k, phase in enumerate(self.schedule.phases)
            if phase.c != 0
        ]
        return "-(" + " + ".join(terms or ["0"]) + ")"

    @staticmethod
    def _apply(dg: str) -> str:
        return f"dg = {dg}\ng += dg\nw -= eta * dg"

    def synapse_variables(self) -> str:
        return "w : 1\ng : 1\neta : 1 (shared)"

    def input_dg(self) -> str:
        """``dg`` of a synapse from a constant input current, once per sample (``x_prev``: the
        input of the sample just closed)."""
        if self.name == "stdp":
            return "-x_prev_pre * gate_post"
        rates = {name: "x_prev_pre" for name in self.weights()}
        if self.schedule.oscillating:
            rates["q"] = "0"  # a constant input has no cosine component
        return self._endpoint(rates)

    def per_sample(self, current_input: bool) -> str | None:
        """Synaptic code run once per sample (after the neurons closed it), or ``None``."""
        if current_input:
            return self._apply(self.input_dg())
        return self._apply(self._endpoint()) if self.name == "endpoint" else None

    def _pairing(self, other: str) -> str:
        """``dg`` of a spike paired with the ``other`` side (``pre`` or ``post``)."""
        if self.counts:
            per_window = " + ".join(f"win{k}_t(t)" for k in range(len(self.schedule.phases)))
            return f"-({self.gate}) * nw_{other} * ({per_window}) / r_max**2"
        return f"-({self.gate}) * r_{other} / (2 * r_max)"

    def on_pre(self) -> str:
        """Learning code of a presynaptic spike (``stdp``), appended to the transmission."""
        return self._apply(self._pairing("post")) if self.name == "stdp" else ""

    def on_post(self) -> str:
        """Learning code of a postsynaptic spike (``stdp``)."""
        return self._apply(self._pairing("pre")) if self.name == "stdp" else ""
