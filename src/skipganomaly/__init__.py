"""skipganomaly: Skip-GANomaly++ and its family for image anomaly detection, with honest evaluation."""
