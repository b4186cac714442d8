"""A tiny MCP server that the tests start as a subprocess: real MCP, real tools. Over stdio by
default; `python mcp_unit_server.py http PORT` serves streamable HTTP at http://127.0.0.1:PORT/mcp."""

import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("units")


@server.tool()
def celsius_to_fahrenheit(celsius: float) -> float:
    """Convert a temperature from degrees Celsius to degrees Fahrenheit."""
    return celsius * 9 / 5 + 32


@server.tool()
def word_count(text: str) -> int:
    """Count the words in a text."""
    return len(text.split())


if __name__ == "__main__":
    if sys.argv[1:2] == ["http"]:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run("stdio")
