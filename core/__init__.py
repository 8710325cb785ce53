"""The bottom layer: what every other package may import (errors, seed streams)."""
