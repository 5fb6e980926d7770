"""The OpenVINO backend (CPU): the joined, lowered cascade graph compiled by OpenVINO's CPU plugin."""
