"""Alerts on failed checks and runs (`alerts`) and the channels they are sent through (`alert_channels`)."""
