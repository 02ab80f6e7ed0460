from dasslab.train import main

main()
