"""Models-from-code entry for the quantml pyfunc (MLflow executes this file to load the model)."""

import mlflow

from quantml.tracking.pyfunc import QuantmlPyfunc

mlflow.models.set_model(QuantmlPyfunc())
