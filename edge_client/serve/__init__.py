"""``edgespec serve``: the OpenAI HTTP API and a chat page on the draft's machine.

``api.py`` checks requests and shapes responses, ``worker.py`` runs them one at a time
through the same ``EdgeClient.generate`` the terminal uses, ``app.py`` is the HTTP front end;
``static/index.html`` is the chat page.
"""
