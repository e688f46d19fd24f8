"""Configuration: process-wide settings from the environment, and the model configuration file."""
