"""A module of Python tools, as a user would write one: `--tools python:tests.python_tools`."""

from ste_ray.tools.loaders import tool


@tool(category="math")
def multiply(a: float, b: float) -> dict:
    """Multiply two numbers.

    Args:
        a: the first number
        b: the second number
    """
    return {"product": a * b}


@tool(category="text")
def shout(text: str) -> dict:
    """Write a text in capital letters.

    Args:
        text: the text
    """
    return {"text": text.upper()}
