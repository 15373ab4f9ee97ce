.PHONY: install test slow lint format demo

install:
	pip install torch==2.13.0 -e ".[dev]"

test:
	python -m pytest

slow:
	python -m pytest -m slow -s

lint:
	ruff check hf_semisup tests examples benchmarks
	ruff format --check hf_semisup tests examples benchmarks

format:
	ruff check --fix hf_semisup tests examples benchmarks
	ruff format hf_semisup tests examples benchmarks

demo:
	hf-semisup demo
