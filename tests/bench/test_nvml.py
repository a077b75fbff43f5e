"""NVML readings degrade to "n/a" without a GPU or driver, and never raise."""

import torch

from bench import nvml


def test_cpu_reads_not_available():
    assert nvml.readings(torch.device("cpu")) == {
        "nvml_memory_used_mb": "n/a",
        "nvml_power_w": "n/a",
    }


def test_cuda_without_a_driver_reads_not_available():
    if torch.cuda.is_available():  # a real GPU: the readings are numbers
        r = nvml.readings(torch.device("cuda"))
        assert all(isinstance(v, float) or v == "n/a" for v in r.values())
    else:  # nvmlInit fails (no library): no exception, "n/a"
        assert set(nvml.readings(torch.device("cuda:0")).values()) == {"n/a"}


def test_the_cost_table_shows_not_available_readings():
    import pandas as pd

    from bench.report import COST, md_table

    text = md_table(pd.DataFrame([{"method": "biflow", "nvml_power_w": "n/a", "nfe": 1}]), COST)
    assert "NVML power (W)" in text and "| n/a " in text
