"""The two-stage bone-type / abnormality classifier (El-Saadawy et al., AICV 2020)."""
