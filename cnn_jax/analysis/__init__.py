"""Model analyses derived from the traced model: MAC counting and receptive fields."""

from cnn_jax.analysis.counting import eqn_macs, jaxpr_macs, macs_by_tag
from cnn_jax.analysis.receptive_field import (Field, RFResult, RFRow, format_rows,
                                              receptive_field, receptive_field_of_fn)
from cnn_jax.analysis.tracing import ModuleCall, TracedModel, placeholders, trace_model

__all__ = ["eqn_macs", "jaxpr_macs", "macs_by_tag", "Field", "RFResult", "RFRow",
           "format_rows", "receptive_field", "receptive_field_of_fn", "ModuleCall",
           "TracedModel", "placeholders", "trace_model"]
