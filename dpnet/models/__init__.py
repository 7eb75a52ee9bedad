"""Models: each keeps its parameters in one flat vector and serves
``loss_and_grad`` (see DESIGN.md, "The contract every engine serves")."""
