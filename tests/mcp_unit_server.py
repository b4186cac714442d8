"""A tiny MCP server (stdio) that the tests start as a subprocess: real MCP, real tools."""

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
    server.run("stdio")
