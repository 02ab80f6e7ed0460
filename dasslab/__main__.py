from dasslab.commands.train import main

main()
