"""The teacher side: async sampling from OpenAI-compatible endpoints, and the local teacher."""
