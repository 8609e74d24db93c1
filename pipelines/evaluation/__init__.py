"""Evaluation: ranking metrics as plain functions, the evaluate stage, the champion comparison and the gate."""
